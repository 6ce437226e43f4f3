"""`slipstream event`: race night in one command (docs/event.md)."""
