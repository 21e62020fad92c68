"""End-to-end tests: a real server on loopback, real clients."""
