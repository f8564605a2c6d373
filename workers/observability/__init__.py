"""Metrics, health and trace context of a worker."""
