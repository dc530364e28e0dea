"""What the loop needs to know about a prepared (wrapped, compiled or sharded) model."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["free_gathered_params", "full_state_dict", "is_sharded", "unwrapped"]


def is_sharded(accelerator) -> bool:
    """Whether the prepared model's parameters are sharded over processes (FSDP)."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def unwrapped(accelerator, model: nn.Module) -> nn.Module:
    """The plain module under DDP / torch.compile wrappers (its parameters are shards under FSDP)."""
    return accelerator.unwrap_model(model, keep_torch_compile=False)


def full_state_dict(accelerator, model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain model's full state dict (every process calls it: FSDP gathers the shards, and only the main
    process's dict is then complete)."""
    return accelerator.get_state_dict(model) if is_sharded(accelerator) else unwrapped(accelerator, model).state_dict()


def free_gathered_params(model: nn.Module) -> None:
    """FSDP 1 keeps the root's gathered parameters after a forward without backward (and after loading a state
    dict) and reuses them at the next forward: free them, so that the next forward gathers the current shards.
    Nothing to do for other models."""
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp._runtime_utils import _reshard as reshard_handle

    if isinstance(model, FullyShardedDataParallel):
        for state in FullyShardedDataParallel.fsdp_modules(model):
            if state._handle is not None:
                reshard_handle(state, state._handle, True)
