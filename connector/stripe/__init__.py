"""Stripe: limits and defaults, the outcome table, HTTP, sessions, rate limiting, the stream sender, v1."""
