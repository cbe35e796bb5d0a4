"""Kafka: client configurations, partition reading, the dead-letter producer and its header contract."""
