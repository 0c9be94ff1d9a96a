"""Benchmarks of lc4_kernels' two public ops.

``python -m benchmarks.report`` (``make bench``) writes the report to
``benchmarks/results/<device-slug>/``; ``pytest benchmarks/ --benchmark-only`` runs the same
workloads as pytest-benchmark suites. Shape sets live in :mod:`benchmarks.shapes`.
"""
