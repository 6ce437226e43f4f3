"""The engine for slipstream's own broker: the asyncio client (client.py), its
subscriptions (subscription.py) and the grouping of publishes (outbox.py)."""
