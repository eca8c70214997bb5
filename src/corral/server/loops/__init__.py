"""Background loops of the server (scheduler tick, node liveness)."""
