"""Fakes at the boundaries of the system (NVML, ...), shared by the test suites."""
