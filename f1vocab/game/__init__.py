"""The F1 games' UDP telemetry formats, as EA publishes them: specs, their compiler, names."""
