"""Protobuf sources and the Python code generated from them (see proto/generate.py)."""
