"""The terminal's side of the sync: batch engine, MQTT subscriber, report outbox."""
