"""TorchServe's side of a visionline model archive: the handler and the model file.

Installed as the package ``visionline_handlers``; packaging copies these two files into
every .mar, and TorchServe loads them from there (each defines exactly one class)."""
