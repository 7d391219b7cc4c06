"""Benchmarks: scripts that print figures (``.venv/bin/python bench/NAME.py``); the tests import their cores."""
