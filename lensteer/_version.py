"""The package version, importable by every stage without the front door."""

__version__ = "0.1.0"
