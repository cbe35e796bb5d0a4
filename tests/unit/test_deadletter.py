"""Dead-letter headers: Kafka Connect's names, our error code, original coordinates and headers kept."""

from __future__ import annotations

from connector import __version__
from connector.deadletter import dead_letter_headers
from connector.errors import MappingError, StripeRejected
from connector.records import KafkaRecord


def test_headers_name_the_reason_code_and_coordinates() -> None:
    record = KafkaRecord("usage", 3, 42, b"k", b"v", 1_700_000_000_123, [("trace", b"abc"), ("empty", None)])
    headers = dead_letter_headers(record, MappingError("field 'value' is missing", code="missing_value"))
    as_dict = dict(headers)
    assert headers[:2] == [("trace", b"abc"), ("empty", b"")], "original headers come first, unchanged"
    assert as_dict["__connect.errors.topic"] == b"usage"
    assert as_dict["__connect.errors.partition"] == b"3"
    assert as_dict["__connect.errors.offset"] == b"42"
    assert as_dict["__connect.errors.exception.class.name"] == b"MappingError"
    assert as_dict["__connect.errors.exception.message"] == b"field 'value' is missing"
    assert as_dict["kafka_stripe.error.code"] == b"missing_value"
    assert as_dict["kafka_stripe.original.timestamp"] == b"1700000000123"
    assert as_dict["kafka_stripe.version"] == __version__.encode()


def test_stripe_code_is_carried() -> None:
    record = KafkaRecord("usage", 0, 1, None, b"v", None)
    headers = dict(dead_letter_headers(record, StripeRejected("too long", code="parameter_invalid")))
    assert headers["kafka_stripe.error.code"] == b"parameter_invalid"
    assert headers["kafka_stripe.original.timestamp"] == b""
