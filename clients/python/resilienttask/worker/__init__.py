"""The internal protocol between workers and schedulers (not part of the public contract)."""
