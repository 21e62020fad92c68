"""Backends that execute compiled plans: ``cpu`` (the native core) and ``reference`` (numpy)."""
