"""Processors: the connector protocol, the built-in sandbox, and the instrumented wrapper."""
