"""The F1 games UDP telemetry: specifications as data, and the decoder."""
