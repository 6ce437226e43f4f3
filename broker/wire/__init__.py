"""The wire protocol and its sans-I/O cores: frames and codec (protocol.py), the
connection states (states.py), and each side's rules of a conversation
(broker_connection.py, client_connection.py). No sockets here; docs/protocol.md."""
