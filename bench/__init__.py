"""Benchmarks and chaos scenarios: ``python -m bench`` (see ``python -m bench --help``)."""
