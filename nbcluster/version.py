"""nbcluster's version (a module of its own: a worker reports it without importing the
package)."""

__version__ = "0.1.0"
