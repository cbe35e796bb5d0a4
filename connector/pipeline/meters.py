"""Which topics may send: a topic's events go out only while its event name has an active meter whose
payload keys are the ones the topic writes (pure: the meters are read elsewhere)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from connector.config.settings import TopicSettings


class MeterLike(Protocol):
    """What the rule reads of a ``billing.meter`` (``connector.stripe.v1.Meter``)."""

    @property
    def id(self) -> str: ...

    @property
    def event_name(self) -> str: ...

    @property
    def active(self) -> bool: ...

    @property
    def customer_key(self) -> str: ...

    @property
    def value_key(self) -> str: ...


def meter_problem(topic: TopicSettings, meters: Iterable[MeterLike]) -> str | None:
    """Why Stripe would drop ``topic``'s events now, or None when its meter takes them."""
    name = topic.event_name
    matching = [m for m in meters if m.event_name == name]
    active = [m for m in matching if m.active]
    if not active:
        if matching:
            ids = ", ".join(m.id for m in matching)
            return f"the meter for event name '{name}' is inactive ({ids})"
        return f"no meter has event name '{name}'"
    meter = active[0]
    if meter.customer_key != topic.customer_key or meter.value_key != topic.value_key:
        return (
            f"meter {meter.id} for event name '{name}' reads payload keys '{meter.customer_key}' and "
            f"'{meter.value_key}', the topic writes '{topic.customer_key}' and '{topic.value_key}'"
        )
    return None


def meter_problems(topics: Sequence[TopicSettings], meters: Sequence[MeterLike]) -> dict[str, str | None]:
    """Each topic's problem (None: its meter takes its events)."""
    return {topic.name: meter_problem(topic, meters) for topic in topics}


def changes(before: Mapping[str, str | None], after: Mapping[str, str | None]) -> tuple[list[str], list[str]]:
    """Topics that became blocked and topics that became free between two readings."""
    blocked = [t for t, problem in after.items() if problem is not None and before.get(t) is None]
    freed = [t for t, problem in after.items() if problem is None and before.get(t) is not None]
    return blocked, freed
