"""nbcluster's version (a module of its own: the worker reports it without importing the package)."""

__version__ = "0.1.0"
