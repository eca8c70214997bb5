"""Use cases. Each function takes a session (or the context) and raises domain errors."""
