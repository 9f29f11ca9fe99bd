"""facesortd: sort photos into one folder per person, continuously and safely."""

__version__ = "0.1.0"
__all__ = ["__version__"]
