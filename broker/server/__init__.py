"""The broker: its state and rules as sans-I/O objects (core.py, session.py,
delivery.py, durables.py, routing.py), and the asyncio loop that serves them
(server.py) with its monitoring (monitor.py, stats.py); docs/architecture.md."""
