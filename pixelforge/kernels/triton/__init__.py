"""Triton kernels of the shared ops (imported lazily by the dispatch; importing this package imports nothing)."""
