"""Which topics may send: an active meter with the topic's payload keys."""

from __future__ import annotations

from connector.config.settings import TopicSettings
from connector.pipeline.meters import changes, meter_problem, meter_problems
from connector.stripe.v1 import Meter


def meter(
    mid: str, name: str, status: str = "active", customer: str = "stripe_customer_id", value: str = "value"
) -> Meter:
    return Meter(mid, name, name, status, "sum", customer, value, False)


TOPIC = TopicSettings(name="usage", event_name="api_requests")


def test_an_active_meter_with_the_topic_s_keys_takes_its_events() -> None:
    assert meter_problem(TOPIC, [meter("mtr_1", "api_requests")]) is None


def test_no_meter_an_inactive_one_or_other_payload_keys_are_named() -> None:
    assert meter_problem(TOPIC, []) == "no meter has event name 'api_requests'"
    problem = meter_problem(TOPIC, [meter("mtr_2", "api_requests", "inactive")])
    assert problem is not None and "inactive" in problem and "mtr_2" in problem
    problem = meter_problem(TOPIC, [meter("mtr_3", "api_requests", customer="account")])
    assert problem is not None and "'account'" in problem and "'stripe_customer_id'" in problem
    # An inactive meter next to an active one does not matter.
    assert (
        meter_problem(TOPIC, [meter("mtr_4", "api_requests", "inactive"), meter("mtr_5", "api_requests")])
        is None
    )


def test_changes_between_two_readings() -> None:
    other = TopicSettings(name="tokens", event_name="tokens")
    before = meter_problems([TOPIC, other], [meter("m", "api_requests")])
    after = meter_problems([TOPIC, other], [meter("t", "tokens")])
    assert changes(before, after) == (["usage"], ["tokens"])
    assert changes(after, after) == ([], [])
