"""Usage records to meter events: the mapper and the value, timestamp and identifier rules."""
