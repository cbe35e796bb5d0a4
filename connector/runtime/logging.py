"""Logging of the connector: text or JSON lines on stderr, every record passed through the one redactor."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TextIO

from connector.config.secrets import Redactor

if TYPE_CHECKING:
    from connector.config.settings import Settings


class RedactingFilter(logging.Filter):
    """Masks known secret values and credential-shaped text in a record's message, args and traceback.

    The message is formatted here and the args dropped, so an argument's ``str`` can't carry a secret
    past the filter; the traceback is rendered once, masked, and cached where every formatter reads it.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.scrub = Redactor(secrets)  # the connector's one redactor: known values, then shapes

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: logging reports it; still mask what is there
            message = f"{record.msg!s} {record.args!r}"
        record.msg, record.args = self.scrub(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self.scrub(record.stack_info)
        return True


_TRACEBACKS = logging.Formatter()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message, worker, exception."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        document: dict[str, object] = {
            "time": moment.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self._worker is not None:
            document["worker"] = self._worker
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            document["exception"] = record.exc_text
        if record.stack_info:
            document["stack"] = record.stack_info
        return json.dumps(document, ensure_ascii=False, default=str)


def known_secrets(settings: Settings) -> list[str]:
    """Every credential value in the settings, and a registry password on its own too."""
    values = [secret.reveal() for secret in settings.secrets()]
    registry = settings.schema_registry
    if registry is not None and registry.basic_auth_user_info is not None:
        values.append(registry.basic_auth_user_info.reveal().partition(":")[2])
    return values


def configure_logging(
    settings: Settings, worker: int | None = None, *, stream: TextIO | None = None
) -> logging.Handler:
    """Text or JSON lines on stderr at ``CONNECTOR_LOG_LEVEL``, secrets masked; workers name themselves."""
    telemetry = settings.telemetry
    handler = logging.StreamHandler(stream or sys.stderr)
    # On the handler, not a logger: logger filters skip records propagated from child loggers.
    handler.addFilter(RedactingFilter(known_secrets(settings)))
    if telemetry.log_format == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        who = "" if worker is None else f"[worker {worker}] "
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {who}%(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(telemetry.log_level)
    # httpx logs every request at INFO: a line per customer lookup, meter read and report poll. Their
    # outcomes are logged by the connector where they matter; DEBUG still shows every request.
    logging.getLogger("httpx").setLevel(
        max(logging.WARNING, root.level) if root.level > logging.DEBUG else logging.DEBUG
    )
    return handler
