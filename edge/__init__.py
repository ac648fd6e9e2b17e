"""Một Cửa terminal: camera, lookup sessions, gallery store, display API, its sync client."""

from core import __version__

__all__ = ["__version__"]
