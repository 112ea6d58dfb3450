"""visionline: the image-classification model lifecycle on Kubernetes."""

__version__ = "0.1.0"
