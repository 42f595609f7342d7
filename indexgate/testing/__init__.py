"""Tooling for tests, benchmarks and chaos runs; production code never imports it.

- ``processes``: real ``celery worker`` processes started and killed by pid;
- ``broker_names``: a run's queue, exchange and stream names, counted and deleted;
- ``app``: the production app plus what only tests need (a no-op baseline task, fault
  injection at a switch step), for ``celery -A indexgate.testing.app worker``;
- ``mongomock_store``: the Mongo adapter over mongomock; importing it registers the
  ``mongomock://`` store URL (production does not know that scheme);
- ``indexes``: small index directories with a manifest, for the demo, tests and benchmarks.
"""
