"""The ``motcua`` command hub and the whole-system demo: the only package that may use
both applications (the terminal ``edge`` and the district server ``district``)."""
