"""The run loop and its parts: offsets, batching, flow control, rebalances, the sender thread, progress."""
