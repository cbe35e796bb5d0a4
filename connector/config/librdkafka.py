"""The librdkafka probe: what librdkafka itself says about the ``KAFKA_*`` properties, without a broker."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

from connector.config.secrets import Redactor, Secret

_PROPERTY_IN_MESSAGE = (
    re.compile(r"configuration property:? \"([^\"]+)\""),
    re.compile(r"^([a-z0-9_.]+) failed:"),
)


def librdkafka_problems(options: Mapping[str, str | Secret], origin: Mapping[str, str]) -> list[str]:
    """What librdkafka itself says about the properties: names, enum values, TLS files, SASL support.

    A consumer is created without ``bootstrap.servers``, so it contacts no broker, and closed again.
    librdkafka stops at the first bad property; that one is dropped and the rest tried again, so every
    bad property is reported, not only the first.
    """
    from confluent_kafka import Consumer, KafkaException

    scrub = Redactor(value for value in options.values() if isinstance(value, Secret))
    probe: dict[str, object] = {
        k: v.reveal() if isinstance(v, Secret) else v for k, v in options.items() if k != "bootstrap.servers"
    }
    problems: list[str] = []
    for _ in range(len(options) + 1):
        try:
            Consumer({**probe, "logger": _SILENT}).close()
            break
        except KafkaException as error:
            detail = error.args[0].str() if error.args and hasattr(error.args[0], "str") else str(error)
            message = scrub(str(detail).removeprefix("Failed to create consumer: "))
            prop = next((m[1] for p in _PROPERTY_IN_MESSAGE if (m := p.search(message))), None)
            where = origin.get(prop, "KAFKA_*") if prop else "KAFKA_*"
            if message.startswith("No such configuration property"):
                problems.append(f"{where}: {prop!r} is not a librdkafka configuration property")
            elif "SASL mechanism GSSAPI" in message and not {"sasl.mechanism", "sasl.mechanisms"} & set(
                probe
            ):
                # librdkafka's default mechanism is GSSAPI (Kerberos), which its wheels are built without.
                problems.append(
                    "KAFKA_SASL_MECHANISM is needed with a SASL security.protocol "
                    f"(PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER); librdkafka: {message}"
                )
            else:
                problems.append(f"{where}: librdkafka rejects it: {message}")
            if prop is None or prop not in probe:
                break
            del probe[prop]
    return problems


# The probe client must not print librdkafka's logs (e.g. "no bootstrap.servers") on the user's terminal.
_SILENT = logging.Logger("kafka-stripe.settings.probe")
_SILENT.addHandler(logging.NullHandler())
_SILENT.propagate = False
