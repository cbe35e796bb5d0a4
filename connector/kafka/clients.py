"""Client configurations the operator commands build: the reader consumer of reconcile and dlq replay."""

from __future__ import annotations

import logging
from typing import Any

from connector.config.settings import Settings


def reader_config(settings: Settings, group_id: str) -> dict[str, Any]:
    """A consumer config that reads by ``assign()``, commits nothing by itself and reports partition
    ends (``enable.partition.eof``, which ``PartitionReader`` needs)."""
    config: dict[str, Any] = settings.consumer_config()
    config.update(
        {
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            # librdkafka's INFO chatter (disconnects) stays out of the output; warnings still show.
            "logger": logging.getLogger("kafka_stripe.kafka"),
        }
    )
    return config


def reader_consumer(settings: Settings, group_id: str) -> Any:
    """A consumer with ``reader_config``: a throwaway group for reconcile, the replay's group for dlq."""
    from confluent_kafka import Consumer

    return Consumer(reader_config(settings, group_id))
