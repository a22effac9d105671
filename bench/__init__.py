"""Benchmarks: `python -m bench` (conversion and inspection vs `cp -r` and load-everything baselines).

See bench/run.py for what is measured and docs/performance.md for a recorded run.
"""
