"""Benchmarks side by side with Celery, RQ, arq and Dramatiq: `make bench` (see bench/run.py)."""
