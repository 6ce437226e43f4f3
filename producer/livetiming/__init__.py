"""F1 live timing: SignalR clients, recordings, the static archive, and the bridge into topics."""
