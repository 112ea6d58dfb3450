"""Package discovery only (metadata is in pyproject.toml): everything under src/, plus the
repository's top-level handlers/ installed as ``visionline_handlers``, so a plain
``pip install .`` can build model archives."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages("src"), "visionline_handlers"],
    package_dir={"": "src", "visionline_handlers": "handlers"},
)
