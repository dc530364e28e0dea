"""The two shared ops every model uses: windowed attention and the selective scan."""
from .attention import attention

__all__ = ["attention"]
