"""The package version, in a module of its own so that any module can read it without importing
the package front door (mvq/__init__.py imports the layers, models and priors)."""

__version__ = "0.2.0"
