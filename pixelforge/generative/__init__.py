"""Generative families (VAR, DiffScaler); importing this package registers them."""
from . import var  # noqa: E402,F401  (VAR tokenizer and transformer)
from . import diffscaler  # noqa: E402,F401  (DiT and DiffScaler adapters)
