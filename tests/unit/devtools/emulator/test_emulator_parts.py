"""Unit tests of the emulator's pure parts: form decoding, parameters, timestamps, masking, config."""

from __future__ import annotations

import argparse
import re
from typing import Any

import pytest

from connector.devtools.emulator.config import EmulatorConfig
from connector.devtools.emulator.errors import ApiError, mask_secret
from connector.devtools.emulator.faults import Faults, TokenBucket
from connector.devtools.emulator.forms import FormError, as_list, decode
from connector.devtools.emulator.params import Params, paginate
from connector.devtools.emulator.server import EmulatorProcess, add_arguments, config_from_args
from connector.devtools.emulator.timestamps import format_rfc3339, is_rfc3339, parse_rfc3339

# The grammar of RFC 3339 section 5.6 (upper-case T and Z), as a reference for the hand-made check.
REFERENCE = re.compile(
    r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d+)?"
    r"(Z|[+-]([01]\d|2[0-3]):[0-5]\d)\Z"
)


def test_decode_nests_brackets_and_appends_arrays() -> None:
    decoded = decode(b"a=1&b[c]=2&b[d][e]=3&x[]=1&x[]=2&t[0]=a&t[1]=b&empty=&sp=a+b%26c")
    assert decoded == {
        "a": "1",
        "b": {"c": "2", "d": {"e": "3"}},
        "x": ["1", "2"],
        "t": {"0": "a", "1": "b"},
        "empty": "",
        "sp": "a b&c",
    }
    assert as_list(decoded["t"]) == ["a", "b"]
    assert as_list(decoded["x"]) == ["1", "2"]


@pytest.mark.parametrize("raw", ["a[b=1", "[x]=1", "a=1&a[b]=2", "a[b]=1&a=2", "a[][b]=1", "a[b]c=1"])
def test_decode_rejects_malformed_keys(raw: str) -> None:
    with pytest.raises(FormError):
        decode(raw)


def test_params_reject_unread_keys_with_their_full_name() -> None:
    params = Params(decode("display_name=x&recurring[interval]=month&recurring[bogus]=1"))
    params.text("display_name")
    recurring = params.nested("recurring")
    assert recurring is not None
    recurring.text("interval")
    with pytest.raises(ApiError) as caught:
        params.finish()
    assert caught.value.param == "recurring[bogus]"
    assert caught.value.code == "parameter_unknown"


def test_params_types_and_errors() -> None:
    params = Params(decode("n=12&neg=-3&bad=1.5&flag=true&choice=day&empty="))
    assert params.integer("n", maximum=100) == 12
    assert params.integer("neg") == -3
    assert params.boolean("flag") is True
    assert params.text("choice", choices=("hour", "day")) == "day"
    assert params.text("empty") is None
    for call in (
        lambda: params.integer("bad"),
        lambda: params.integer("n", maximum=10),
        lambda: params.text("empty", required=True),
        lambda: params.text("missing", required=True),
        lambda: params.text("choice", choices=("hour",)),
    ):
        with pytest.raises(ApiError) as caught:
            call()
        assert caught.value.status == 400


def test_paginate_both_directions() -> None:
    items = [f"id{i}" for i in range(5)]

    def page(query: str) -> tuple[list[str], bool]:
        return paginate(items, lambda s: s, Params(decode(query)), "thing")

    assert page("limit=2") == (["id0", "id1"], True)
    assert page("limit=2&starting_after=id1") == (["id2", "id3"], True)
    assert page("limit=2&starting_after=id3") == (["id4"], False)
    assert page("limit=2&ending_before=id3") == (["id1", "id2"], True)
    assert page("limit=2&ending_before=id1") == (["id0"], False)
    with pytest.raises(ApiError):
        page("starting_after=nope")
    with pytest.raises(ApiError):
        page("limit=101")


CANDIDATES = [
    "2024-06-01T12:15:00Z",
    "2024-06-01T12:15:00.123Z",
    "2024-06-01T12:15:00.123456789Z",
    "2024-06-01T12:15:00+05:30",
    "2024-06-01T12:15:00.5-01:00",
    "2024-02-29T23:59:59Z",
    "2024-06-01T12:15:00",
    "2024-06-01t12:15:00Z",
    "2024-06-01T12:15:00z",
    "2024-06-01 12:15:00Z",
    "2024-06-01T12:15Z",
    "2024-13-01T12:15:00Z",
    "2024-06-01T24:00:00Z",
    "2024-06-01T12:15:00,5Z",
    "2024-06-01T12:15:00.Z",
    "2024-06-01T12:15:00.",
    "2024-06-01T12:15:00+0530",
    "2024-06-01T12:15:00+05",
    "2024-06-01T12:15:00+05:30:00",
    "20240601T121500Z",
    "2024-W23-1T12:15:00Z",
    " 2024-06-01T12:15:00Z",
    "yesterday",
    "",
]


@pytest.mark.parametrize("text", CANDIDATES)
def test_is_rfc3339_agrees_with_the_grammar(text: str) -> None:
    assert is_rfc3339(text) == (REFERENCE.match(text) is not None)


def test_calendar_errors_are_not_timestamps() -> None:
    assert not is_rfc3339("2023-02-29T00:00:00Z")
    assert not is_rfc3339("2024-04-31T00:00:00Z")


def test_format_and_parse_rfc3339() -> None:
    assert format_rfc3339(1_717_244_100.0) == "2024-06-01T12:15:00.000Z"
    assert format_rfc3339(1_717_244_100.1234) == "2024-06-01T12:15:00.123Z"
    assert parse_rfc3339("2024-06-01T12:15:00.250Z") == 1_717_244_100.25
    assert parse_rfc3339("2024-06-01T14:15:00+02:00") == 1_717_244_100.0


@pytest.mark.parametrize(
    ("secret", "shown"),
    [
        # Stripe's form: a star per hidden character, the last four shown (as quoted from its answers,
        # ``sk_test_********************DgAU`` for a 24-character key tail).
        ("sk_test_51HabcdefghijklmnopWXYZ", "sk_test_" + "*" * 19 + "WXYZ"),
        ("sk_live_0123456789abcd", "sk_live_" + "*" * 10 + "abcd"),
        ("sk_live_01234567", "sk_live_********"),
        ("mes_tok_0123456789abcdefghij", "*" * 24 + "ghij"),
        ("short", "*****"),
    ],
)
def test_mask_secret_never_shows_the_whole_secret(secret: str, shown: str) -> None:
    assert mask_secret(secret) == shown


def test_config_reports_every_problem_at_once() -> None:
    with pytest.raises(ValueError) as caught:
        EmulatorConfig(error_rate=2, latency_ms=-1, session_ttl=0, api_key="pk_test_x")
    message = str(caught.value)
    for fragment in ("error_rate", "latency_ms", "session_ttl", "api_key"):
        assert fragment in message


def test_faults_update_is_all_or_nothing() -> None:
    faults = Faults(EmulatorConfig(), lambda: 0.0)
    with pytest.raises(ValueError) as caught:
        faults.update({"error_rate": 0.5, "drop_rate": 7, "bogus": 1, "outage": "yes"})
    assert "drop_rate" in str(caught.value) and "bogus" in str(caught.value) and "outage" in str(caught.value)
    assert faults.error_rate == 0.0
    assert faults.update({"error_rate": 0.5, "expire_tokens": True}) is True
    assert faults.error_rate == 0.5 and faults.stream_faulty


def test_token_bucket_refills_with_the_clock() -> None:
    now = [100.0]
    bucket = TokenBucket(2, lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    now[0] += 0.5
    assert bucket.take() is True
    assert bucket.take() is False
    now[0] += 10
    assert [bucket.take() for _ in range(3)] == [True, True, False]


def test_emulator_process_renders_the_account_and_wire_settings() -> None:
    def flags(**options: Any) -> list[str]:
        return EmulatorProcess(**options).command()[8:]  # after python -m connector emulator --host/--port

    assert flags() == []
    assert flags(compress=True, decimal_values=True, sandbox_limits=True) == [
        "--compress",
        "--decimal-values",
        "--sandbox-limits",
    ]
    assert flags(should_retry=False) == ["--should-retry", "false"]
    assert flags(should_retry=True, seed=3) == ["--seed", "3", "--should-retry", "true"]


def test_cli_settings_reach_the_config() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    default = config_from_args(parser.parse_args([]))
    assert (default.compress, default.should_retry, default.decimal_values, default.sandbox_limits) == (
        False,
        None,
        False,
        False,
    )
    args = ["--compress", "--should-retry", "false", "--decimal-values", "--sandbox-limits"]
    config = config_from_args(parser.parse_args(args))
    assert (config.compress, config.should_retry, config.decimal_values, config.sandbox_limits) == (
        True,
        False,
        True,
        True,
    )
    assert config_from_args(parser.parse_args(["--should-retry", "true"])).should_retry is True
