"""Benchmarks of iotda-export (`make bench`, or `python -m bench --smoke` for CI's quick run).

Every figure is printed next to its baseline measured in the same run and their ratio; the full
run writes bench/RESULTS.md. See bench/__main__.py for the figures and how each is measured.
"""
