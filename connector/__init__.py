"""kafka-stripe: a Kafka consumer group that delivers usage records to Stripe as meter events."""

__version__ = "0.1.0"
