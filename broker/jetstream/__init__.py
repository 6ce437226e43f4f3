"""NATS JetStream as slipstream's engine for more than one machine (docs/scale-out.md).

`Client("nats://HOST:PORT")` returns a `JetStreamClient`: the same interface
as the embedded broker's client, on a JetStream stream that holds the topics.
"""
