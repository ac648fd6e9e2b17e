"""The ground floor every package stands on: errors, file helpers, addresses, TOML loading.

It imports no other package of the project.
"""

__version__ = "0.1.0"
