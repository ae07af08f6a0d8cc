"""Bounded queues between pipeline stages."""
