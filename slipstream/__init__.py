"""The `slipstream` command: one entry point for the broker, the producers and the consumers."""
