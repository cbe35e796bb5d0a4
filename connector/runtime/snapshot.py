"""What the pipeline reports when telemetry scrapes or probes it: plain values, read on the HTTP thread."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from connector.stripe.results import SenderStats


class PartitionSnapshot(NamedTuple):
    """One owned partition as the pipeline sees it when scraped."""

    topic: str
    partition: int
    committed: int | None = None  # last position this member committed under this assignment
    end: int | None = None  # log end offset (high watermark); None when unknown


class SessionSnapshot(NamedTuple):
    """The sender's current meter event session; times on the telemetry clock (``time.monotonic``)."""

    id: str
    expires_at: float
    created_at: float | None = None  # None: the age is counted from when telemetry first saw the session


class MeterSnapshot(NamedTuple):
    """A topic's meter as the connector last read it: ``problem`` is None while its meter is active."""

    topic: str
    event_name: str
    problem: str | None = None  # why the topic's events are not sent (no active meter, keys differ)


class Snapshot(NamedTuple):
    """What the ``snapshot`` callback returns; read on the HTTP thread, so plain values only."""

    partitions: Sequence[PartitionSnapshot] = ()
    sender: SenderStats | None = None
    session: SessionSnapshot | None = None
    buffered: int | None = None  # records consumed and not yet done
    meters: Sequence[MeterSnapshot] = ()  # empty until the meters were read
    customers_waiting: int | None = None  # records held until Stripe knows their customer
    # Per Stripe context label ("platform", an account id, or "other" past the label bound).
    contexts: Mapping[str, SenderStats] | None = None
    open_aggregates: int | None = None  # pre-aggregation: aggregates in open segments (None: none configured)
    late_records: int | None = None  # records for a window this member had already flushed
