"""The test suite; ``tests.support`` is shared by the tests and the benchmarks."""
