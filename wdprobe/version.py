"""The package version, in one place (read by run manifests)."""
__version__ = "0.1.0"
