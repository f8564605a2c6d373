"""Kafka I/O: topic names, topic creation, producers and consumers."""
