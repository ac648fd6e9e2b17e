"""What the district and its terminals share on the wire: envelope and signatures, topics,
keys, the MQTT client set-up, change records and the PIN scheme."""
