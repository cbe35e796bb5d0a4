"""Test support shared by the tests and the benchmarks: brokers, the connector as a process, fault tools."""
