"""Benchmark tools: ``throughput.py`` (images/s, step time, memory) and ``scaling.py`` (cost vs input size)."""
