"""The benchmark: anypool against its peers (``python -m benchmarks``)."""
