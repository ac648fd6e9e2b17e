"""The district's operator console: a web page for the district's staff, served by
``motcua district serve`` at ``/console`` over TLS (docs/district.md "Console").

Modules: ``auth`` (users file, sessions, CSRF, failed-login bound), ``i18n`` (Vietnamese
and English strings), ``data`` (what the pages compute: deletion confirmations, staff
rating averages), ``views`` (the pages and form actions), ``tlscert`` (a self-signed
certificate for a test install); ``templates/`` and ``static/``.
"""
