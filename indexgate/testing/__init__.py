"""Tooling for tests, benchmarks and chaos runs; production code never imports it.

- ``processes``: real ``celery worker`` processes started and killed by pid;
- ``broker_names``: a run's queue, exchange and stream names, counted and deleted;
- ``app``: the production app plus what only tests need (a no-op baseline task, fault
  injection at a switch step), for ``celery -A indexgate.testing.app worker``.
"""
