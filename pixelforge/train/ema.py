"""EMA of the trained weights (timm's ``ModelEmaV3``) that also works when FSDP shards the parameters.

Without sharding the EMA is a full copy of the unwrapped model, as usual. Under FSDP each process keeps the EMA of
its own shard of every parameter (the same memory share as the model), and the full EMA weights are gathered
(``accelerator.get_state_dict`` with the EMA values put into the sharded parameters) for evaluation and export.
Buffers are averaged only without sharding; under FSDP they are the model's own.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from .distributed import free_gathered_params, full_state_dict, is_sharded, unwrapped

__all__ = ["ModelEma", "free_gathered_params", "is_sharded"]


class _Shards(nn.Module):
    """This process's parameter shards of a prepared model, as a module (what ModelEmaV3 averages)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.shards = nn.ParameterList([p for p in model.parameters()])


class ModelEma:
    """EMA of a prepared model's weights.

    Args:
        accelerator: the run's Accelerator. model: the prepared (wrapped) model.
        decay: EMA decay. warmup: timm's decay warm-up (1 - (1 + step)^(-2/3), capped at ``decay``).
    """

    def __init__(self, accelerator, model: nn.Module, decay: float, warmup: bool = True):
        from timm.utils import ModelEmaV3

        self.accelerator, self.model, self.sharded = accelerator, model, is_sharded(accelerator)
        self.target = _Shards(model) if self.sharded else unwrapped(accelerator, model)
        self.ema = ModelEmaV3(self.target, decay=decay, use_warmup=warmup)

    def update(self, step: int) -> None:
        """Average in the current weights after optimiser step ``step``."""
        self.ema.update(self.target, step=step)

    @contextmanager
    def applied(self):
        """Yields the module to evaluate with the EMA weights: the EMA copy, or (sharded) the prepared model with
        the EMA shards swapped in for the duration."""
        if not self.sharded:
            yield self.ema.module
            return
        # the shard tensors themselves: after a forward FSDP 1 may leave the root's parameters pointing at the
        # gathered (unsharded) storage, so the restore goes to the tensors the swap wrote into
        free_gathered_params(self.model)
        shards = [p.data for p in self.target.shards]
        kept = [s.clone() for s in shards]
        with torch.no_grad():
            for s, e in zip(shards, self.ema.module.shards):
                s.copy_(e)
        try:
            yield self.model
        finally:
            free_gathered_params(self.model)
            with torch.no_grad():
                for s, k in zip(shards, kept):
                    s.copy_(k)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The full EMA weights in the plain model's key layout (every process calls it; under FSDP only the main
        process's dict is complete)."""
        if not self.sharded:
            return self.ema.module.state_dict()
        with self.applied() as model:
            return full_state_dict(self.accelerator, model)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint stores: the EMA copy (sharded: this process's local shards)."""
        return {k: _local(v) for k, v in self.ema.state_dict().items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict`'s tensors (the same keys and shapes)."""
        own = self.ema.state_dict()
        if own.keys() != state.keys():
            raise ValueError(f"EMA state has keys {sorted(state)[:3]}..., expected {sorted(own)[:3]}...")
        for k, v in own.items():
            _local(v).copy_(state[k])


def _local(t: torch.Tensor) -> torch.Tensor:
    """This process's part of a tensor (FSDP 2 parameters are DTensors)."""
    return t.to_local() if hasattr(t, "to_local") else t

