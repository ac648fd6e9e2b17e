"""Operations of a terminal: systemd notify/watchdog, metrics, journal logging, doctor."""
