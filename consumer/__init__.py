"""slipstream consumers: processes that subscribe to topics and act on each message."""
