"""Decoding (greedy, sampling, stops, batching) and prompt modes."""
