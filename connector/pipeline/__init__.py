"""The run loop: consuming, batching, handing batches to the sender, offsets and commits."""
