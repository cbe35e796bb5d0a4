"""The delivery ledger on a real broker (created compacted, written, read back, rewinds, tombstones) and
``kafka-stripe ledger show|rewind`` in-process: output, exit statuses and every refusal."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]

from connector.cli import main
from connector.kafka.delivery_ledger import (
    LedgerKey,
    LedgerMark,
    LedgerWriter,
    ensure_ledger_topic,
    read_ledger,
)
from tests.support.harness import API_KEY, connector_env, use_connector_env
from tests.support.kafka import unique_name

NAMESPACE = "acct_ledger.test"
EVENT = "api_requests"
TOPIC_ID = "TopicIdOfUsage00000001"


@pytest.fixture
def ledger_topic(kafka_bootstrap: str) -> Iterator[str]:
    """A ledger topic name unique to the test, created compacted by ``ensure_ledger_topic``."""
    name = unique_name("ledger")
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    assert ensure_ledger_topic(admin, name, create=True) is None
    yield name
    for future in admin.delete_topics([name], operation_timeout=5).values():
        with contextlib.suppress(Exception):
            future.result(timeout=10)


def write(bootstrap: str, ledger_topic: str, *entries: tuple[LedgerKey, int, str, bool]) -> None:
    """Write ``(key, mark, topic, rewind)`` entries in order and wait until the broker acknowledged all."""
    writer = LedgerWriter(Producer({"bootstrap.servers": bootstrap}), ledger_topic)
    for key, mark, topic, rewind in entries:
        writer.write(key, mark, topic, rewind=rewind)
    assert writer.flush(30.0) == 0
    assert writer.failures() == []


def tombstone(bootstrap: str, ledger_topic: str, key: LedgerKey) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(ledger_topic, key=key.encode(), value=None)
    assert producer.flush(30.0) == 0


def read(bootstrap: str, ledger_topic: str) -> dict[LedgerKey, LedgerMark]:
    return read_ledger(Consumer, {"bootstrap.servers": bootstrap}, ledger_topic, timeout_s=30.0)


def test_the_ledger_topic_is_created_compacted_and_accepted_when_it_exists(
    kafka_bootstrap: str, ledger_topic: str
) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    assert ledger_topic in admin.list_topics(timeout=10).topics
    assert ensure_ledger_topic(admin, ledger_topic, create=True) is None  # a second member: no error
    assert ensure_ledger_topic(admin, ledger_topic, create=False) is None
    try:
        (future,) = admin.describe_configs([ConfigResource("topic", ledger_topic)]).values()
        configs = future.result(timeout=10)
    except Exception as exc:  # a broker that cannot describe configs
        pytest.skip(f"the broker does not describe topic configs: {exc}")
    assert "compact" in configs["cleanup.policy"].value


def test_a_missing_ledger_topic_is_named_with_how_to_create_it(kafka_bootstrap: str) -> None:
    name = unique_name("ledger-absent")
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    problem = ensure_ledger_topic(admin, name, create=False)
    assert problem is not None and name in problem and "cleanup.policy=compact" in problem, problem
    assert name not in admin.list_topics(timeout=10).topics


def test_marks_are_read_back_highest_since_the_last_rewind_and_tombstones_delete(
    kafka_bootstrap: str, ledger_topic: str
) -> None:
    first = LedgerKey(NAMESPACE, EVENT, TOPIC_ID, 0)
    second = LedgerKey(NAMESPACE, EVENT, TOPIC_ID, 1)
    other_event = LedgerKey(NAMESPACE, "other_event", TOPIC_ID, 0)
    assert read(kafka_bootstrap, ledger_topic) == {}
    write(
        kafka_bootstrap,
        ledger_topic,
        (first, 100, "usage", False),
        (first, 80, "usage", False),  # a slower writer of the same key does not move it back
        (second, 50, "usage", False),
        (second, 20, "usage", True),  # a rewind does
        (other_event, 7, "usage", False),
    )
    marks = read(kafka_bootstrap, ledger_topic)
    assert {k: (m.mark, m.topic, m.rewind) for k, m in marks.items()} == {
        first: (100, "usage", False),
        second: (20, "usage", True),
        other_event: (7, "usage", False),
    }
    assert all(m.written_at_ms > 1_600_000_000_000 for m in marks.values())
    tombstone(kafka_bootstrap, ledger_topic, other_event)
    write(kafka_bootstrap, ledger_topic, (second, 30, "usage", False))
    marks = read(kafka_bootstrap, ledger_topic)
    assert {k: m.mark for k, m in marks.items()} == {first: 100, second: 30}


def test_records_that_are_not_ledger_records_are_ignored(kafka_bootstrap: str, ledger_topic: str) -> None:
    key = LedgerKey(NAMESPACE, EVENT, TOPIC_ID, 0)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(ledger_topic, key=b"not a ledger key", value=b'{"mark": 5, "topic": "usage"}')
    producer.produce(ledger_topic, key=key.encode(), value=b"not json")
    assert producer.flush(30.0) == 0
    write(kafka_bootstrap, ledger_topic, (key, 9, "usage", False))
    assert {k: m.mark for k, m in read(kafka_bootstrap, ledger_topic).items()} == {key: 9}


def test_reading_a_missing_ledger_topic_is_an_error_naming_it(kafka_bootstrap: str) -> None:
    from connector.kafka.delivery_ledger import LedgerError

    name = unique_name("ledger-absent")
    with pytest.raises(LedgerError, match=name):
        read_ledger(Consumer, {"bootstrap.servers": kafka_bootstrap}, name, timeout_s=10.0)


# --- kafka-stripe ledger show|rewind -------------------------------------------------------------


@pytest.fixture
def command(
    kafka_bootstrap: str,
    ledger_topic: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Callable[..., tuple[int, str, str]]:
    """``command(*args) -> (status, stdout, stderr)``: ``kafka-stripe ledger …`` in-process, its
    configuration pointing at this test's ledger topic (Stripe is never contacted)."""
    env = connector_env(
        kafka_bootstrap, "http://127.0.0.1:9", ["usage"], "g-ledger", CONNECTOR_LEDGER_TOPIC=ledger_topic
    )
    use_connector_env(monkeypatch, env)

    def run(*args: str) -> tuple[int, str, str]:
        status = main(["ledger", *args])
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err and API_KEY not in out + err
        return status, out, err

    return run


def test_show_prints_every_mark_as_a_table_and_as_json(
    kafka_bootstrap: str, ledger_topic: str, command: Callable[..., tuple[int, str, str]]
) -> None:
    status, out, _ = command("show")
    assert status == 0 and "no marks" in out
    write(
        kafka_bootstrap,
        ledger_topic,
        (LedgerKey(NAMESPACE, EVENT, TOPIC_ID, 0), 120, "usage", False),
        (LedgerKey(NAMESPACE, EVENT, TOPIC_ID, 1), 45, "usage", False),
        (LedgerKey(NAMESPACE, EVENT, "TopicIdOfClicks0000001", 0), 3, "clicks", False),
    )
    status, out, _ = command("show")
    assert status == 0
    lines = out.splitlines()
    assert len(lines) == 4 and "partition" in lines[0] and "mark" in lines[0], out
    assert lines[1].split()[:3] == ["clicks", "0", "3"]
    assert lines[2].split()[:5] == ["usage", "0", "120", EVENT, TOPIC_ID]
    assert lines[3].split()[-1] == NAMESPACE

    status, out, _ = command("show", "--topic", "usage", "--json")
    rows = json.loads(out)
    assert status == 0 and [(r["topic"], r["partition"], r["mark"]) for r in rows] == [
        ("usage", 0, 120),
        ("usage", 1, 45),
    ]
    assert {"namespace", "event_name", "topic_id", "written_at_ms"} <= set(rows[0])
    status, out, _ = command("show", "--topic", "absent")
    assert status == 0 and "no marks for topic 'absent'" in out


def test_rewind_needs_yes_then_writes_the_lower_mark(
    kafka_bootstrap: str, ledger_topic: str, command: Callable[..., tuple[int, str, str]]
) -> None:
    key = LedgerKey(NAMESPACE, EVENT, TOPIC_ID, 0)
    write(kafka_bootstrap, ledger_topic, (key, 120, "usage", False))
    rewind = ("rewind", "--topic", "usage", "--partition", "0", "--to", "100")
    status, _, err = command(*rewind)
    assert status == 2 and "--yes" in err and "24 hours" in err and "100–119" in err, err
    assert read(kafka_bootstrap, ledger_topic)[key].mark == 120  # nothing written

    status, _, err = command(*rewind, "--yes")
    assert status == 0, err
    mark = read(kafka_bootstrap, ledger_topic)[key]
    assert (mark.mark, mark.topic, mark.rewind) == (100, "usage", True)
    # The connector's next forward write (a group behind, at 110) moves it up from there.
    write(kafka_bootstrap, ledger_topic, (key, 110, "usage", False))
    assert read(kafka_bootstrap, ledger_topic)[key].mark == 110


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--partition", "0", "--to", "130"), "must be below the current mark"),
        (("--partition", "0", "--to", "120"), "must be below the current mark"),
        (("--partition", "0", "--to", "-1"), "must be below the current mark"),
        (("--partition", "5", "--to", "10"), "no mark for usage[5]"),
        (("--partition", "0", "--to", "10", "--event-name", "absent"), "no mark for usage[0]"),
    ],
)
def test_rewind_refuses_a_higher_mark_and_an_unknown_key(
    kafka_bootstrap: str,
    ledger_topic: str,
    command: Callable[..., tuple[int, str, str]],
    args: tuple[str, ...],
    says: str,
) -> None:
    key = LedgerKey(NAMESPACE, EVENT, TOPIC_ID, 0)
    write(kafka_bootstrap, ledger_topic, (key, 120, "usage", False))
    status, _, err = command("rewind", "--topic", "usage", *args, "--yes")
    assert status == 2 and says in err, err
    assert read(kafka_bootstrap, ledger_topic)[key].mark == 120


def test_rewind_refuses_ambiguity_until_told_which_mark(
    kafka_bootstrap: str, ledger_topic: str, command: Callable[..., tuple[int, str, str]]
) -> None:
    ours, blue = LedgerKey(NAMESPACE, EVENT, TOPIC_ID, 0), LedgerKey(NAMESPACE, "clicks", TOPIC_ID, 0)
    other_account = LedgerKey("acct_other.test", EVENT, TOPIC_ID, 0)
    write(
        kafka_bootstrap,
        ledger_topic,
        *((k, 120, "usage", False) for k in (ours, blue, other_account)),
    )
    rewind = ("rewind", "--topic", "usage", "--partition", "0", "--to", "100", "--yes")
    status, _, err = command(*rewind)
    assert status == 2 and "several marks" in err and "--event-name clicks" in err, err
    status, _, err = command(*rewind, "--event-name", EVENT)
    assert status == 2 and "several marks" in err and "acct_other.test" in err, err
    status, _, err = command(*rewind, "--event-name", EVENT, "--namespace", NAMESPACE)
    assert status == 0, err
    marks = {k: m.mark for k, m in read(kafka_bootstrap, ledger_topic).items()}
    assert marks == {ours: 100, blue: 120, other_account: 120}


def test_rewind_after_a_re_created_topic_picks_the_current_topic_id(
    kafka_bootstrap: str,
    ledger_topic: str,
    make_topic: Callable[..., str],
    command: Callable[..., tuple[int, str, str]],
) -> None:
    topic = make_topic(partitions=1)
    current = _topic_id(kafka_bootstrap, topic)
    old, new = (
        LedgerKey(NAMESPACE, EVENT, "OldIdOfTheSameTopic001", 0),
        LedgerKey(NAMESPACE, EVENT, current, 0),
    )
    write(kafka_bootstrap, ledger_topic, (old, 500, topic, False), (new, 40, topic, False))
    status, _, err = command("rewind", "--topic", topic, "--partition", "0", "--to", "10", "--yes")
    assert status == 0, err
    marks = {k: m.mark for k, m in read(kafka_bootstrap, ledger_topic).items()}
    assert marks == {old: 500, new: 10}


def _topic_id(bootstrap: str, topic: str) -> str:
    from connector.kafka.topics import topic_ids

    ids: dict[str, Any] = dict(topic_ids(AdminClient({"bootstrap.servers": bootstrap}), [topic]))
    return str(ids[topic])


def test_an_existing_ledger_topic_that_is_not_compacted_is_refused(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    name = make_topic(partitions=1)  # the broker's default cleanup.policy: delete
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    problem = ensure_ledger_topic(admin, name, create=True)
    assert problem is not None and name in problem and "cleanup.policy=compact" in problem, problem
