"""The customer gate: known customers pass, unknown ones wait, are looked up, released or rejected."""

from __future__ import annotations

from connector.pipeline.customers import CustomerGate, Verdict


def gate(wait_s: float = 10.0, cache_size: int = 100) -> CustomerGate[str]:
    return CustomerGate(wait_s, cache_size, recheck_s=1.0)


def test_an_unknown_customer_is_looked_up_once_and_its_events_released_when_found() -> None:
    g = gate()
    assert g.admit("cus_A", "e1", now=0) is Verdict.HOLD
    assert g.admit("cus_A", "e2", now=0.1) is Verdict.HOLD
    assert g.lookups() == ["cus_A"]
    assert g.lookups() == []  # handed out once while pending
    assert g.waiting == 2
    assert g.answered("cus_A", True, now=0.2) == ["e1", "e2"]
    assert g.waiting == 0
    assert g.admit("cus_A", "e3", now=0.3) is Verdict.SEND
    assert g.lookups() == []


def test_a_missing_customer_is_rechecked_while_events_wait_and_created_in_time_is_delivered() -> None:
    g = gate(wait_s=10)
    g.admit("cus_B", "e1", now=0)
    g.lookups()
    assert g.answered("cus_B", False, now=0.1) == []
    assert g.due(now=0.5) == ([], [])
    assert g.lookups() == []  # not yet due for a re-check
    assert g.due(now=1.2) == ([], [])
    assert g.lookups() == ["cus_B"]
    assert g.answered("cus_B", True, now=1.3) == ["e1"]  # created during the wait


def test_events_of_a_customer_still_missing_after_the_wait_are_rejected_and_later_ones_at_once() -> None:
    g = gate(wait_s=10)
    g.admit("cus_C", "e1", now=0)
    g.lookups()
    g.answered("cus_C", False, now=0.1)
    g.admit("cus_C", "e2", now=5)
    assert g.due(now=9.9) == ([], [])
    assert g.due(now=10.0) == ([], ["e1"])
    assert g.waiting == 1
    g.lookups()
    g.answered("cus_C", False, now=10.5)  # still missing, first seen 10.4 s ago
    assert g.admit("cus_C", "e3", now=10.6) is Verdict.REJECT  # unknown for longer than the wait
    assert g.due(now=15.0) == ([], ["e2"])
    assert g.waiting == 0


def test_long_missing_customer_with_a_stale_check_waits_only_for_one_fresh_lookup() -> None:
    g = gate(wait_s=10)
    g.admit("cus_D", "e1", now=0)
    g.lookups()
    g.answered("cus_D", False, now=0)
    assert g.due(now=10) == ([], ["e1"])
    assert g.admit("cus_D", "e2", now=20) is Verdict.HOLD  # last check 20 s old: look again
    assert g.lookups() == ["cus_D"]
    g.answered("cus_D", False, now=20.1)
    assert g.due(now=21.9) == ([], [])
    assert g.due(now=22.0) == ([], ["e2"])


def test_a_failed_lookup_lets_events_through_unchecked_for_a_while_never_rejects_them() -> None:
    g = gate(wait_s=10)
    g.admit("cus_E", "e1", now=0)
    g.lookups()
    assert g.answered("cus_E", None, now=0.1) == ["e1"]
    assert g.admit("cus_E", "e2", now=0.5) is Verdict.SEND
    assert g.admit("cus_E", "e3", now=1.2) is Verdict.HOLD  # looked up again
    assert g.lookups() == ["cus_E"]


def test_a_lookup_that_never_answers_sends_the_events_at_the_deadline_rather_than_dropping_them() -> None:
    g = gate(wait_s=5)
    g.admit("cus_F", "e1", now=0)
    g.lookups()
    assert g.due(now=5) == (["e1"], [])


def test_held_events_of_revoked_partitions_are_dropped_and_the_cache_is_bounded() -> None:
    g = gate(cache_size=2)
    g.admit("cus_G", "keep", now=0)
    g.admit("cus_G", "gone", now=0)
    assert g.drop(lambda item: item == "gone") == 1
    assert list(g.held()) == ["keep"] and g.waiting == 1
    for customer in ("cus_1", "cus_2", "cus_3"):
        g.answered(customer, True, now=1)
    assert list(g.known) == ["cus_2", "cus_3"]
    assert g.next_deadline() == 10.0


def test_a_full_waiting_room_sends_events_unchecked_instead_of_holding_up_others() -> None:
    g: CustomerGate[str] = CustomerGate(10.0, 100, recheck_s=1.0, max_waiting=2)
    assert g.admit("cus_1", "a", now=0) is Verdict.HOLD
    assert g.admit("cus_2", "b", now=0) is Verdict.HOLD
    assert g.admit("cus_3", "c", now=0) is Verdict.SEND
    assert g.overflowed == 1 and g.waiting == 2
    assert g.lookups() == ["cus_1", "cus_2", "cus_3"]  # still looked up, for the next events
