"""Dead-letter headers: Kafka Connect's names, our error code, original coordinates and headers kept,
read back by the same module; the producer shell's polling."""

from __future__ import annotations

from connector import __version__
from connector.errors import MappingError, StripeRejected
from connector.kafka.deadletter import (
    HEADER_CODE,
    HEADER_OFFSET,
    HEADER_ORIGINAL_TIMESTAMP,
    HEADER_PARTITION,
    HEADER_REPORT,
    HEADER_TOPIC,
    OUR_HEADER_PREFIXES,
    DeadLetterHeaders,
    dead_letter_headers,
)
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


def test_the_reading_side_reads_what_the_writing_side_wrote() -> None:
    record = KafkaRecord("usage", 3, 42, b"k", b"v", 1_700_000_000_123, [("trace", b"abc"), ("empty", None)])
    headers = dead_letter_headers(record, MappingError("field 'value' is missing", code="missing_value"))
    read = DeadLetterHeaders.read(headers)
    assert (read.topic, read.partition, read.offset) == ("usage", 3, 42)
    assert (read.code, read.reason, read.problem) == ("missing_value", "field 'value' is missing", "")
    assert read.original_timestamp_ms == 1_700_000_000_123
    assert read.original_headers == (("trace", b"abc"), ("empty", b""))
    assert read.original(b"k", b"v", 7) == record._replace(headers=(("trace", b"abc"), ("empty", b"")))


def test_a_record_stripe_reported_carries_the_report_id_beside_the_connect_headers() -> None:
    record = KafkaRecord("usage", 2, 7, b"k", b"v", 1_700_000_000_123, [("trace", b"abc")])
    error = StripeRejected(
        "No customer found with id 'cus_gone_1'.", code="stripe_async:meter_event_customer_not_found"
    )
    headers = dead_letter_headers(record, error, "TopicIdOfUsage00000001", "evt_test_1")
    as_dict = dict(headers)
    assert as_dict[HEADER_REPORT] == b"evt_test_1"
    assert as_dict["__connect.errors.topic"] == b"usage" and as_dict["__connect.errors.offset"] == b"7"
    read = DeadLetterHeaders.read(headers)
    assert (read.report, read.topic, read.partition, read.offset) == ("evt_test_1", "usage", 2, 7)
    assert read.code == "stripe_async:meter_event_customer_not_found"
    assert read.original_headers == (("trace", b"abc"),)
    assert DeadLetterHeaders.read(dead_letter_headers(record, error)).report is None


def test_headers_of_ours_are_recognised_by_name() -> None:
    record = KafkaRecord("usage", 0, 1, None, b"v", None)
    names = [name for name, _ in dead_letter_headers(record, MappingError("bad", code="bad"))]
    assert names[:3] == [HEADER_TOPIC, HEADER_PARTITION, HEADER_OFFSET]
    assert HEADER_CODE in names and HEADER_ORIGINAL_TIMESTAMP in names
    assert all(name.startswith(OUR_HEADER_PREFIXES) for name in names)


def test_the_reading_side_says_why_a_record_cannot_be_rebuilt() -> None:
    foreign = DeadLetterHeaders.read([("source", b"elsewhere")])
    assert foreign.original(None, b"v", 1) is None and "not a kafka-stripe dead letter" in foreign.problem
    assert foreign.original_headers == (("source", b"elsewhere"),) and foreign.code == ""

    garbled = DeadLetterHeaders.read(
        [(HEADER_TOPIC, b"usage"), (HEADER_PARTITION, b"x"), (HEADER_OFFSET, b"1")]
    )
    assert garbled.original(None, b"v", 1) is None and "garbled" in garbled.problem

    # No original timestamp: the dead letter's own stands in; the last of a repeated header of ours wins.
    bare = DeadLetterHeaders.read(
        [(HEADER_TOPIC, b"old"), (HEADER_TOPIC, b"usage"), (HEADER_PARTITION, b"2"), (HEADER_OFFSET, b"9")]
    )
    assert bare.original(None, b"v", 55) == KafkaRecord("usage", 2, 9, None, b"v", 55, ())


class CountingProducer:
    """A real confluent-kafka Producer (no broker behind it), counting the polls it is asked for."""

    def __init__(self) -> None:
        from confluent_kafka import Producer

        # No bootstrap servers at all: a refused connection would queue error events, which librdkafka
        # counts in len() as well, so the producer would not look idle (the test then raced with them).
        # With no broker to try, nothing is queued until a record is produced; it times out.
        self.producer = Producer({"message.timeout.ms": 300})
        self.polls = 0

    def produce(self, *args: object, **kwargs: object) -> None:
        self.producer.produce(*args, **kwargs)

    def __len__(self) -> int:
        return len(self.producer)

    def poll(self, timeout: float) -> int:
        self.polls += 1
        served: int = self.producer.poll(timeout)
        return served


def test_poll_skips_an_idle_producer_but_serves_every_outstanding_report() -> None:
    import time

    from connector.kafka.deadletter import DeadLetterQueue

    now = [0.0]
    producer = CountingProducer()
    dlq = DeadLetterQueue(producer, clock=lambda: now[0])
    dlq.poll()
    dlq.poll()
    assert producer.polls == 1, "nothing out: at most one poll a second"
    now[0] += DeadLetterQueue.IDLE_POLL_INTERVAL_S
    dlq.poll()
    assert producer.polls == 2

    reports: list[Exception | None] = []
    record = KafkaRecord("usage", 0, 7, None, b"v", None)
    dlq.send(record, MappingError("bad", code="bad"), "usage.dlq", reports.append)
    assert dlq.outstanding == 1
    deadline = time.monotonic() + 10
    while not reports and time.monotonic() < deadline:
        dlq.poll()  # with a record out, every call reaches the producer
    assert producer.polls > 3 and dlq.outstanding == 0
    assert len(reports) == 1 and isinstance(reports[0], Exception), "no broker: the delivery fails"
