"""Stripe's asynchronous error reports, heard and routed: ``report`` (parsing), ``events`` (the v2 events
API), ``cursor`` (durable progress in the ledger topic), ``election`` (which member polls), ``locate``
(samples → records), ``intent`` (dead letters exactly once) and ``worker`` (the thread)."""
