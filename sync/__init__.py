"""District-to-terminal sync over MQTT: change log, signed batches, snapshots."""
