"""The alerter: rules in TOML, evaluated on every message, alerts out three ways."""
