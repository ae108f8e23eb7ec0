"""Benchmarks: ``make bench`` runs them all (``python -m bench.run``); each is also ``python -m bench.NAME --quick``."""
