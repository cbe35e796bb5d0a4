"""Avro: schemas parsed once, field-path rules, the compiled decoder and the registry lookup."""
