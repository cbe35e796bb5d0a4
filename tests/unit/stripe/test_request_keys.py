"""Idempotency keys of stream requests: they name the request's records and fit Stripe's length."""

from __future__ import annotations

import random

from connector.stripe.request_keys import (
    MAX_KEY_LENGTH,
    KeyRange,
    Origin,
    parse_request_key,
    ranges_of,
    request_key,
)

NS_A = "AbCdEfGhIjKlMnOpQrSt-_"
NS_B = "zyxwvutsrqponmlkjihg_-"


def test_a_key_names_each_partition_range_and_turns_back_into_it() -> None:
    origins = [
        Origin(NS_A, 0, 7),
        Origin(NS_A, 0, 9),
        Origin(NS_A, 3, 100),
        Origin(NS_B, 0, 5),
        Origin(NS_A, 0, 8),
    ]
    key = request_key(origins, b'{"events":[]}')
    parsed = parse_request_key(key)
    assert parsed is not None and not parsed.truncated
    assert parsed.ranges == (KeyRange(NS_A, 0, 7, 9), KeyRange(NS_A, 3, 100, 100), KeyRange(NS_B, 0, 5, 5))
    assert len(key) <= MAX_KEY_LENGTH


def test_the_same_body_gets_the_same_key_and_another_body_another_key() -> None:
    origins = [Origin(NS_A, 1, o) for o in range(10, 20)]
    assert request_key(origins, b"body") == request_key(list(origins), b"body")
    assert request_key(origins, b"body") != request_key(origins, b"body2")
    # A resend of fewer events of the same range: a different body, so a different key.
    assert request_key(origins[:5] + origins[-1:], b"half") != request_key(origins, b"body")


def test_four_partitions_with_the_largest_offsets_fit_without_truncation() -> None:
    big = 2**63 - 1
    origins = [Origin(NS_A, 2**31 - 1 - p, big - 100) for p in range(4)]
    origins += [Origin(NS_A, 2**31 - 1 - p, big) for p in range(4)]
    key = request_key(origins, b"x")
    parsed = parse_request_key(key)
    assert len(key) <= MAX_KEY_LENGTH and parsed is not None and not parsed.truncated
    assert all(r.first == big - 100 and r.last == big for r in parsed.ranges)


def test_too_many_partitions_keep_what_fits_and_say_the_key_is_truncated() -> None:
    origins = [Origin(NS_A, p, 10**15 + p) for p in range(30)]
    key = request_key(origins, b"x")
    parsed = parse_request_key(key)
    assert len(key) <= MAX_KEY_LENGTH
    assert parsed is not None and parsed.truncated
    assert 0 < len(parsed.ranges) < 30
    assert parsed.ranges == tuple(ranges_of(origins)[: len(parsed.ranges)])


def test_foreign_and_malformed_keys_are_not_parsed() -> None:
    for key in (
        "",
        "6f1c-uuid-4",
        "ks1:short:a:1:2+3",
        "ks1:0123456789abcdef:a:x:2+3",
        "ks1:0123456789abcdef:a:1:2",
    ):
        assert parse_request_key(key) is None
    empty = parse_request_key("ks1:0123456789abcdef:")
    assert empty is not None and empty.ranges == ()


def test_random_origins_round_trip() -> None:
    rng = random.Random(3)
    for _ in range(200):
        origins = [
            Origin(rng.choice((NS_A, NS_B)), rng.randrange(4), rng.randrange(10**12)) for _ in range(50)
        ]
        parsed = parse_request_key(request_key(origins, b"b"))
        assert parsed is not None
        for origin in origins:
            assert (
                any(
                    r.namespace == origin.namespace
                    and r.partition == origin.partition
                    and r.first <= origin.offset <= r.last
                    for r in parsed.ranges
                )
                or parsed.truncated
            )
