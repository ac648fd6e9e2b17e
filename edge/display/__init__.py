"""The kiosk display client: a separate process that watches the terminal's display API and
serves the screen as a local web page for a browser in kiosk mode (``motcua display``)."""
