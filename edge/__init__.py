"""Một Cửa terminal: face pipeline, gallery store, lookup sessions, display API."""

__version__ = "0.1.0"
