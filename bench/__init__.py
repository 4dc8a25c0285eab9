"""Benchmark harness for octo-gateway: ``python -m bench`` (``--quick`` for a smoke run).

Every server under test runs in its own process and every load generator in another, so the
numbers describe the gateway as operators run it (``python -m gateway serve``), not an in-process
test app. See ``bench/__main__.py`` for the phases and ``bench/report.py`` for the targets.
"""
