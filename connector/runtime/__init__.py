"""The process around the pipeline: entry and signals, worker processes, metrics, health server, logging."""
