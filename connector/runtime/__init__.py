"""The process around the pipeline: entry, signals, worker processes, telemetry."""
