"""Meter event values and payload values as text: canonical decimals, at most 15 significant digits."""

from __future__ import annotations

from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal, InvalidOperation
from typing import Any

from connector.config.topics import topic_env_key
from connector.errors import MappingError
from connector.stripe.limits import MAX_SIGNIFICANT_DIGITS

# Not a Stripe rule: without it a value like 1e-999999 would render as a million zeros.
MAX_DECIMAL_PLACES = 30
MAX_EXACT = 10**MAX_SIGNIFICANT_DIGITS  # integers below this print exactly, without a check
_WHITESPACE = " \t\r\n"
_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)


def show(value: Any) -> str:
    """A value quoted for an error message, cut short."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's 4300-digit conversion limit
        return f"<{type(value).__name__} too large to show>"
    return text if len(text) <= 60 else text[:57] + "..."


def format_value(value: Any, field: str = "value") -> str:
    """A meter event value as a canonical decimal string: no exponent, no trailing zeros after the
    point, no ``-0``, no float artefacts, at most 15 significant digits; raises ``MappingError``."""
    kind = type(value)
    if kind is int:
        if -MAX_EXACT < value < MAX_EXACT:
            return str(value)
        raise _too_many_digits(field, value)
    if kind is float:
        return _format_double(value, field)
    if kind is Decimal:
        return _format_decimal(value, field, value)
    if kind is str:
        return _format_string(value, field)
    if isinstance(value, bool):
        raise MappingError(f"{field}: a boolean ({value}) is not a number", code="invalid_value")
    # Subclasses (IntEnum, str enums, ...) are formatted as their base type.
    if isinstance(value, int):
        return format_value(int(value), field)
    if isinstance(value, float):
        return _format_double(float(value), field)
    if isinstance(value, Decimal):
        return _format_decimal(value, field, value)
    if isinstance(value, str):
        return _format_string(str(value), field)
    raise MappingError(f"{field}: a {kind.__name__} is not a number", code="invalid_value")


def _format_double(value: float, field: str) -> str:
    # 15 significant digits is all a double holds reliably: 0.1 + 0.2 prints as 0.3. The "g"
    # format already drops trailing zeros; it switches to an exponent outside 1e-5..1e15.
    text = f"{value:.15g}"
    if "e" in text or "n" in text:  # exponent form, or nan/inf
        if value != value or value in (float("inf"), float("-inf")):
            raise MappingError(f"{field}: {value} is not a finite number", code="invalid_value")
        return _format_decimal(Decimal(text), field, value)
    return "0" if text == "-0" else text


def _format_string(value: str, field: str) -> str:
    # Surrounding ASCII whitespace is tolerated ("12.5\n" from a CSV export); the rest must be a
    # decimal number, exponent allowed. Decimal() alone would also take "1_000", "NaN" and "٣".
    text = value.strip(_WHITESPACE)
    if text.isdigit() and text.isascii():
        text = text.lstrip("0") or "0"
        if len(text) > MAX_SIGNIFICANT_DIGITS:
            raise _too_many_digits(field, value)
        return text
    # Decimal() parses the rest; on ASCII without "_" it takes no more than decimal numbers, in any
    # exponent form, and the non-finite words (NaN, Infinity) that _format_decimal refuses.
    if not text.isascii() or "_" in text:
        raise MappingError(f"{field}: {show(value)} is not a number", code="invalid_value")
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise MappingError(f"{field}: {show(value)} is not a number", code="invalid_value") from None
    return _format_decimal(number, field, value)


def _format_decimal(value: Decimal, field: str, original: Any) -> str:
    if not value.is_finite():
        raise MappingError(f"{field}: {show(original)} is not a finite number", code="invalid_value")
    text = str(value)
    if "E" not in text:  # plain notation: -12.500, 0.0012, 17
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        significant = text.lstrip("-0.")  # leading zeros do not count, inner and trailing ones do
        if len(significant) - ("." in significant) > MAX_SIGNIFICANT_DIGITS:
            raise _too_many_digits(field, original)
        return "0" if text == "-0" else text
    # str() chose an exponent: the number ends in zeros (1E+3) or is below 1e-6. Check the size
    # of the plain rendering before making it; integer zeros count as Stripe counts them.
    # normalize() drops trailing zeros; its context is wide enough never to round.
    if not value:
        return "0"
    value = value.normalize(_EXACT)
    _sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite
    if len(digits) + max(exponent, 0) > MAX_SIGNIFICANT_DIGITS:
        raise _too_many_digits(field, original)
    if -exponent > MAX_DECIMAL_PLACES:
        raise MappingError(
            f"{field}: {show(original)} needs more than {MAX_DECIMAL_PLACES} decimal places",
            code="value_too_many_digits",
        )
    return format(value, "f")


def not_whole(field: str, value: Any, topic: str) -> MappingError:
    # Stripe counts whole numbers only unless the account has decimals enabled; sent anyway, the event
    # would be dropped after Stripe's 200 (meter_event_invalid_value).
    return MappingError(
        f"{field}: {show(value)} is not a whole number; Stripe accepts decimal values only on accounts "
        f"that have them enabled (then set TOPIC_{topic_env_key(topic)}_DECIMAL_VALUES=true)",
        code="value_not_whole",
    )


def _too_many_digits(field: str, value: Any) -> MappingError:
    return MappingError(
        f"{field}: {show(value)} has more than {MAX_SIGNIFICANT_DIGITS} significant digits",
        code="value_too_many_digits",
    )


def payload_text(value: Any, field: str) -> str:
    """A copied payload value as a string: text as is, booleans as JSON writes them, integers in
    full, other numbers by the value rules; anything else (bytes, lists, nested maps) is rejected."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    try:
        if isinstance(value, int):
            return str(int(value))  # ValueError past Python's 4300-digit conversion limit
        if isinstance(value, float | Decimal):
            return format_value(value, field)
    except (MappingError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, MappingError) else f"{field}: {exc}"
        raise MappingError(reason, code="invalid_payload_field") from None
    raise MappingError(
        f"{field}: a {type(value).__name__} is not a text, number or boolean", code="invalid_payload_field"
    )


def text_entries(entries: dict[Any, Any], field: str) -> dict[str, str]:
    """The entries of a map or record copied into the payload, values as text, nulls left out."""
    texts = {}
    for key, value in entries.items():
        if type(key) is not str:
            raise MappingError(
                f"{field}: payload key {show(key)} is not a string", code="invalid_payload_field"
            )
        if value is not None:
            texts[key] = payload_text(value, f"{field}.{key}")
    return texts
