"""Generative families (VAR, DiffScaler); importing this package registers them."""
