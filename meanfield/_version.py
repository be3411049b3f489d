"""The package version (one place: the package, the run files and CITATION.cff agree on it)."""
__version__ = "0.1.0"
