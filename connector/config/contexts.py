"""Stripe contexts: the syntax of a context (``acct_…`` or a path ``acct_a/acct_b``) checked in one place."""

from __future__ import annotations

import re

# An account id, or a context path of account ids joined by "/" (stripe-python's ``StripeContext``).
CONTEXT = re.compile(r"acct_[A-Za-z0-9]{1,64}(?:/acct_[A-Za-z0-9]{1,64}){0,7}")
MAX_CONTEXT_LENGTH = 255  # a header value we send; far above any real path


def context_problem(value: str) -> str | None:
    """Why ``value`` is not a Stripe context, or None when it is one."""
    if len(value) > MAX_CONTEXT_LENGTH or not CONTEXT.fullmatch(value):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f"{shown!r} is not a Stripe context (an account id acct_..., or a path acct_.../acct_...)"
    return None
