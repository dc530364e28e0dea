"""DiT: the diffusion transformer of Peebles & Xie (ICCV 2023), as a diffusers model, with DiffScaler task adapters.

Patchify (conv) + fixed 2-D sin-cos positions → N blocks of adaLN-Zero attention/MLP conditioned on c = t_emb + y_emb →
adaLN final layer → unpatchify. Optionally learned σ (2× output channels). Attention goes through
:func:`pixelforge.kernels.attention` (global, W = 1).

Layouts it loads: ours / the official facebookresearch/DiT checkpoints (same key names; the official ``pos_embed``
parameter is dropped, we recompute it) and diffusers' ``DiTTransformer2DModel`` (split q/k/v, and a timestep + class
embedder copy inside every block). Two quirks of the diffusers layout are reproduced through the config:
``timestep_freq_shift=1`` (diffusers divides the frequency exponent by half−1, the official code by half) and
``mlp_norm_eps`` (diffusers' MLP LayerNorm uses ``norm_eps``, 1e-5 by default, the official 1e-6). When the per-block
embedder copies differ (a model trained in diffusers' layout) ``block_embedders=True`` keeps one per block.

A DiT may carry task adapters (``adapter`` + ``tasks`` in its config): see :mod:`.affiner` and
:meth:`DiT.apply_adapter`.
The registered names (``dit_xl_2``, ``dit_tiny_4``...) live in :mod:`.models`, which does not import diffusers.
"""
from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ...kernels import attention
from ...zoo import CheckpointError, load_weights, read_checkpoint
from . import affiner as aff

__all__ = ["DiT", "timestep_embedding", "sincos_pos_embed_2d", "checkpoint_filter_fn", "official_build", "method_rules",
           "METHODS"]


def timestep_embedding(t: torch.Tensor, dim: int, freq_shift: float = 0.0, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal timestep features [cos(t·f), sin(t·f)], f_i = max_period^(−i / (dim/2 − freq_shift)).

    t: (B,) (may be fractional) → (B, dim) float32. freq_shift 0 is the official DiT, 1 diffusers' DiT.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
                      / (half - freq_shift))
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int, base_size: int | None = None) -> torch.Tensor:
    """Fixed 2-D sin-cos positions (MAE/DiT): token (i, j) ↦ [emb(x = j), emb(y = i)], each half [sin, cos].

    Positions are scaled by base_size / grid (diffusers' rule for other sizes; the identity at the native size).
    Returns (grid_h·grid_w, dim) float32, computed in float64.
    """
    if dim % 4:
        raise ValueError(f"sin-cos positions need a width divisible by 4, got {dim}")
    base = base_size or grid_h
    ys = torch.arange(grid_h, dtype=torch.float32) / (grid_h / base)
    xs = torch.arange(grid_w, dtype=torch.float32) / (grid_w / base)
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))

    def emb1d(pos):
        out = pos.double().reshape(-1)[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.cat([emb1d(xx), emb1d(yy)], dim=1).float()


class PatchEmbed(nn.Module):
    """Non-overlapping p×p patches → tokens: (B, C, H, W) → (B, H/p · W/p, D)."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, patch_size, patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    """t (B,) → sinusoidal features (256) → Linear, SiLU, Linear → (B, D)."""

    def __init__(self, hidden_size: int, freq_shift: float = 0.0, frequency_size: int = 256):
        super().__init__()
        self.freq_shift, self.frequency_size = freq_shift, frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = timestep_embedding(t, self.frequency_size, self.freq_shift)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class table; its last row is the null (unconditional) class when the model has one. labels (B,) → (B, D)."""

    def __init__(self, rows: int, hidden_size: int):
        super().__init__()
        self.embedding_table = nn.Embedding(rows, hidden_size)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels)


class Attention(nn.Module):
    """Global multi-head self-attention with a fused qkv projection. (B, N, D) → (B, N, D)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 1, self.num_heads, c // self.num_heads).permute(2, 0, 3, 4, 1, 5)
        out = attention(q, k, v)  # (B, 1, H, N, D/H)
        return self.proj(out[:, 0].transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """fc1 → GELU(tanh) → fc2. (B, N, D) → (B, N, D)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """adaLN-Zero block: (shift, scale, gate) × (attention, MLP) from c. x (B, N, D), c (B, D) → (B, N, D).

    With ``embedders`` (diffusers' layout) the block owns a timestep and a class embedder and builds its own c.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, mlp_norm_eps: float,
                 embedders: tuple[float, int] | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=mlp_norm_eps)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
        if embedders is not None:
            self.t_embedder = TimestepEmbedder(hidden_size, embedders[0])
            self.y_embedder = LabelEmbedder(embedders[1], hidden_size)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa[:, None] * self.attn(_modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp[:, None] * self.mlp(_modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """adaLN (shift, scale) → Linear to p·p·out_channels. x (B, N, D), c (B, D) → (B, N, p²·C_out)."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(_modulate(self.norm_final(x), shift, scale))


# Adaptation methods: rules for :func:`affiner.apply_adapters` (see specs/diffscaler.md §5). ``{rank}`` is filled in.
_BLOCK_LINEARS = ["blocks.*", "final_layer.*"]
METHODS = {
    # Affiner on every block linear (qkv, proj, fc1, fc2, adaLN) and the final layer's two linears
    "diffscaler": [{"targets": _BLOCK_LINEARS, "exclude": ["*embedder*"], "rank": "{rank}"}],
    # DiffFit: a per-channel γ on the attention and MLP branch outputs (reparameterised as (1+a)·Wx on their last
    # linear; the bias is trained separately) + every bias in the model + the class table
    "difffit": [{"targets": ["blocks.*.attn.proj", "blocks.*.mlp.fc2"], "rank": 0, "scale_mode": "channel"},
                {"targets": ["*"], "rank": 0, "scale_mode": "none", "shift": True}],
    # BitFit: every bias + the class table
    "bitfit": [{"targets": ["*"], "rank": 0, "scale_mode": "none", "shift": True}],
    # LoRA (W + α/r·B·A, α = r) on the fused qkv and the attention projection
    "lora": [{"targets": ["blocks.*.attn.qkv", "blocks.*.attn.proj"], "rank": "{rank}", "scale_mode": "none",
              "shift": False, "branch_act": "identity", "branch_scale": 1.0}],
    # LoRA on the MLP too
    "lora_mlp": [{"targets": ["blocks.*.attn.*", "blocks.*.mlp.*"], "rank": "{rank}", "scale_mode": "none",
                  "shift": False, "branch_act": "identity", "branch_scale": 1.0}],
    # full fine-tuning: every weight trainable, a fresh class table per task (one task per model)
    "full": [],
}


def method_rules(method: str, rank: int = 8) -> list[dict]:
    """The adapter rules of a named method (``METHODS``) with ``rank`` filled in."""
    if method not in METHODS:
        raise ValueError(f"unknown adaptation method '{method}'; known: {', '.join(METHODS)}")
    return [{k: (rank if v == "{rank}" else v) for k, v in r.items()} for r in METHODS[method]]


class DiT(ModelMixin, ConfigMixin):
    """Class-conditional (or unconditional) diffusion transformer, optionally with DiffScaler task adapters.

    Args:
        sample_size: input height = width (pixels or latents). patch_size: p. in_channels: C.
        out_channels: 2C with learned σ, C otherwise (derived when None; always stored in the config).
        num_layers, hidden_size, num_heads, mlp_ratio: the transformer.
        num_classes: classes (0 = unconditional). class_dropout_prob: label dropout in training mode; when > 0
            (or num_classes is 0) the class table has a null row, index ``num_classes``, used for CFG.
        learn_sigma: predict the variance interpolation too (out_channels = 2·in_channels).
        qkv_bias: bias on q, k, v. timestep_freq_shift: 0 official DiT, 1 diffusers' DiT.
        mlp_norm_eps: eps of the pre-MLP LayerNorm (1e-6 official; diffusers' ``norm_eps``).
        block_embedders: one timestep/class embedder per block (diffusers' layout) instead of one shared.
        adapter: None, or {"method": name, "rank": r, "rules": [...], "merged": bool} (see :meth:`apply_adapter`).
        tasks: [{"name": str, "num_classes": int}] — one entry per task parameter set.
    Shapes: forward(x (B, C, H, W), t (B,) or scalar, class_labels (B,), task_ids (B,)) → (B, out_channels, H, W).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, sample_size: int = 32, patch_size: int = 2, in_channels: int = 4,
                 out_channels: int | None = None, num_layers: int = 28, hidden_size: int = 1152, num_heads: int = 16,
                 mlp_ratio: float = 4.0, num_classes: int = 1000, class_dropout_prob: float = 0.1,
                 learn_sigma: bool = True, qkv_bias: bool = True, timestep_freq_shift: float = 0.0,
                 mlp_norm_eps: float = 1e-6, block_embedders: bool = False, adapter: dict | None = None,
                 tasks: list | None = None):
        super().__init__()
        expected_out = in_channels * (2 if learn_sigma else 1)
        if out_channels is None:
            self.register_to_config(out_channels=expected_out)
        elif out_channels != expected_out:
            raise ValueError(f"out_channels={out_channels} contradicts learn_sigma={learn_sigma} with "
                             f"in_channels={in_channels} (expected {expected_out})")
        self.out_channels = expected_out
        rows = num_classes + int(class_dropout_prob > 0 or num_classes == 0)
        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        if not block_embedders:
            self.t_embedder = TimestepEmbedder(hidden_size, timestep_freq_shift)
            self.y_embedder = LabelEmbedder(rows, hidden_size)
        per_block = (timestep_freq_shift, rows) if block_embedders else None
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio, qkv_bias, mlp_norm_eps, per_block)
                                    for _ in range(num_layers))
        self.final_layer = FinalLayer(hidden_size, patch_size, expected_out)
        grid = sample_size // patch_size
        self.register_buffer("pos_embed", sincos_pos_embed_2d(hidden_size, grid, grid)[None], persistent=False)
        self.gradient_checkpointing = False
        self.initialize_weights()
        if adapter is not None:
            self._build_adapter(adapter, tasks or [])

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """The official initialisation: Xavier linears, zero biases, N(0, 0.02) class table and timestep MLP,
        zero adaLN modulations and output layer (so a fresh DiT predicts 0)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        for emb in self._embedders():
            nn.init.normal_(emb[1].embedding_table.weight, std=0.02)
            nn.init.normal_(emb[0].mlp[0].weight, std=0.02)
            nn.init.normal_(emb[0].mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[1].weight)
            nn.init.zeros_(block.adaLN_modulation[1].bias)
        for p in (*self.final_layer.adaLN_modulation[1].parameters(), *self.final_layer.linear.parameters()):
            nn.init.zeros_(p)

    def _embedders(self) -> list[tuple[nn.Module, nn.Module]]:
        owners = self.blocks if self.config.block_embedders else [self]
        return [(o.t_embedder, o.y_embedder) for o in owners]

    # ---- conditioning ------------------------------------------------------------------------------------------

    def null_class_index(self, task: int | None = None) -> int | None:
        """The null (unconditional) class of the base model (task None or -1) or of task ``task``, from the config;
        None when the base model has no null row (trained without label dropout)."""
        if task is None or task < 0:
            c = self.config
            return c.num_classes if (c.class_dropout_prob > 0 or c.num_classes == 0) else None
        return int(self.config.tasks[task]["num_classes"])

    def num_classes_of(self, task: int | None = None) -> int:
        """Number of real classes of the base model (task None / -1) or of task ``task`` (0: unconditional)."""
        if task is None or task < 0:
            return self.config.num_classes
        return int(self.config.tasks[task]["num_classes"])

    def _null_labels(self, task_ids: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        if task_ids is None:
            null = self.null_class_index()
            if null is None:
                raise ValueError("this DiT has no null class (class_dropout_prob=0): class_labels are required")
            return torch.full((batch,), null, dtype=torch.long, device=device)
        nulls = torch.tensor([self.null_class_index(t) if t >= 0 else (self.null_class_index() or 0)
                              for t in range(-1, len(self.config.tasks or []))], device=device)
        return nulls[task_ids + 1]

    def example_inputs(self, batch_size: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Random (x_t (B, C, H, W), timesteps (B,), class labels (B,)) for smoke tests and benchmarks."""
        c = self.config
        x = torch.randn(batch_size, c.in_channels, c.sample_size, c.sample_size)
        return x, torch.randint(0, 1000, (batch_size,)), torch.randint(0, max(int(c.num_classes), 1), (batch_size,))

    def forward(self, hidden_states: torch.Tensor, timestep, class_labels: torch.Tensor | None = None,
                task_ids: torch.Tensor | None = None, return_dict: bool = True):
        """Predict ε (and the σ interpolation with learned σ).

        Args:
            hidden_states: x_t (B, C, H, W), H and W multiples of the patch size.
            timestep: (B,) or a scalar, int or float.
            class_labels: (B,) int64 in [0, num_classes] of each sample's task (the last = null); None = null.
            task_ids: (B,) int64 task per sample (-1 = base model); None = base model.
        Returns:
            ``Transformer2DModelOutput(sample=(B, out_channels, H, W))``, or a 1-tuple without ``return_dict``.
        """
        x = hidden_states
        b, _, h, w = x.shape
        p = self.config.patch_size
        t = torch.as_tensor(timestep, device=x.device)
        t = t.expand(b) if t.ndim == 0 else t
        if task_ids is not None:
            task_ids = torch.as_tensor(task_ids, device=x.device, dtype=torch.long).expand(b)
        n_tasks = aff.num_tasks(self)
        if task_ids is not None and n_tasks == 0:
            raise ValueError("task_ids given but this DiT has no task adapters")
        aff.set_task_routing(self, task_ids if n_tasks else None)
        drop = self.config.class_dropout_prob if self.training else 0.0
        if class_labels is None:
            y = self._null_labels(task_ids, b, x.device)
        else:
            y = class_labels.to(x.device).long()
            if drop > 0:
                y = torch.where(torch.rand(b, device=x.device) < drop, self._null_labels(task_ids, b, x.device), y)

        pos = self.pos_embed
        if (h // p, w // p) != (self.config.sample_size // p,) * 2:
            pos = sincos_pos_embed_2d(self.config.hidden_size, h // p, w // p,
                                      self.config.sample_size // p).to(x.device)[None]
        x = self.x_embedder(x) + pos.to(x.dtype)
        conds = [te(t) + ye(y) for te, ye in self._embedders()]
        for i, block in enumerate(self.blocks):
            c = conds[i] if len(conds) > 1 else conds[0]
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, x, c)
            else:
                x = block(x, c)
        x = self.final_layer(x, conds[0])
        c_out = self.out_channels
        x = x.reshape(b, h // p, w // p, p, p, c_out).permute(0, 5, 1, 3, 2, 4).reshape(b, c_out, h, w)
        return Transformer2DModelOutput(sample=x) if return_dict else (x,)

    # ---- task adapters -------------------------------------------------------------------------------------------

    def _build_adapter(self, adapter: dict, tasks: list) -> None:
        rules = adapter["rules"]
        if adapter.get("merged"):
            aff.build_merged_branches(self, rules)
            return
        aff.apply_adapters(self, rules, task_classes=[int(t["num_classes"]) for t in tasks],
                           label_embedder_types=(LabelEmbedder,))
        if adapter.get("method") == "full":
            for p in self.parameters():
                p.requires_grad_(True)

    def apply_adapter(self, method: str = "diffscaler", rank: int = 8, tasks: list | None = None,
                      rules: list | None = None) -> DiT:
        """Add task adapters (in place): ``method`` from :data:`METHODS` (or explicit ``rules``), one task per entry
        of ``tasks`` ([{"name", "num_classes"}]). Base weights are frozen (except for ``full``); every task starts
        equal to the base model, with a class table of num_classes + 1 rows copied from the base null row."""
        if self.config.adapter is not None:
            raise ValueError("this DiT already has adapters; add tasks with add_task()")
        if self.null_class_index() is None:
            raise ValueError("task class tables are initialised from the null class; this DiT has none")
        tasks = [dict(name=str(t["name"]), num_classes=int(t["num_classes"])) for t in (tasks or [])]
        if method == "full" and len(tasks) > 1:
            raise ValueError("full fine-tuning changes the shared weights: one task per model")
        rules = rules if rules is not None else method_rules(method, rank)
        adapter = {"method": method, "rank": int(rank), "rules": rules}
        self._build_adapter(adapter, tasks)
        self.register_to_config(adapter=adapter, tasks=tasks)
        return self

    def task_index(self, task: int | str) -> int:
        """A task's id from its id or its name."""
        names = [t["name"] for t in (self.config.tasks or [])]
        if isinstance(task, str):
            if task not in names:
                raise ValueError(f"unknown task '{task}'; this model has: {', '.join(names) or 'no tasks'}")
            return names.index(task)
        if not -1 <= int(task) < len(names):
            raise ValueError(f"task id {task} out of range: this model has {len(names)} task(s)")
        return int(task)

    def add_task(self, name: str, num_classes: int = 0) -> int:
        """Append a zero-start task (identical to the base model until trained); other tasks are untouched.
        Returns its id."""
        if self.config.adapter is None or self.config.adapter.get("merged"):
            raise ValueError("apply_adapter() first")
        if self.config.adapter.get("method") == "full" and self.config.tasks:
            raise ValueError("full fine-tuning changes the shared weights: one task per model")
        if name in [t["name"] for t in self.config.tasks]:
            raise ValueError(f"task '{name}' exists already")
        t = aff.add_task(self, int(num_classes))
        self.register_to_config(tasks=[*self.config.tasks, {"name": name, "num_classes": int(num_classes)}])
        return t

    def trainable_task(self, tasks: int | str | list | None) -> None:
        """Make exactly the parameters of ``tasks`` trainable (None: none); with method ``full`` also every base
        weight."""
        ids = [] if tasks is None else [self.task_index(t) for t in (tasks if isinstance(tasks, list) else [tasks])]
        full = bool(self.config.adapter and self.config.adapter.get("method") == "full")
        aff.set_trainable_tasks(self, ids, base=full and bool(ids))

    def task_state_dict(self, task: int | str) -> dict[str, torch.Tensor]:
        """One task's parameters (Affiners + class table), keyed by module and parameter name."""
        return aff.task_state_dict(self, self.task_index(task))

    def save_task(self, task: int | str, path: str | os.PathLike) -> Path:
        """Write one task as its own safetensors file; the metadata records its name, classes and adapter rules.
        With method ``full`` the whole (fine-tuned) state dict is included."""
        from ...zoo import save_weights

        t = self.task_index(task)
        state = self.task_state_dict(t)
        adapter = self.config.adapter
        if adapter["method"] == "full":
            state.update({k: v for k, v in self.state_dict().items() if ".tasks." not in k})
        meta = {"pixelforge.diffscaler_task": json.dumps({
            "name": self.config.tasks[t]["name"], "num_classes": self.config.tasks[t]["num_classes"],
            "method": adapter["method"], "rank": adapter["rank"], "rules": aff.rules_json(adapter["rules"])})}
        return save_weights(state, path, meta)

    def load_task(self, path: str | os.PathLike, name: str | None = None) -> int:
        """Add a task saved by :meth:`save_task` as a new task id (tasks already loaded keep their outputs).
        The file must come from the same adapter method/placement. Returns the new id."""
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = (f.metadata() or {}).get("pixelforge.diffscaler_task")
        if meta is None:
            raise CheckpointError(f"{path} is not a DiffScaler task file (no task metadata)")
        meta = json.loads(meta)
        adapter = self.config.adapter
        if adapter is None:
            self.apply_adapter(meta["method"], meta["rank"], [], rules=json.loads(meta["rules"]))
            adapter = self.config.adapter
        if aff.rules_json(adapter["rules"]) != meta["rules"]:
            raise CheckpointError(f"{path} was trained with adapter '{meta['method']}' (rank {meta['rank']}), "
                                  f"this model has '{adapter['method']}' (rank {adapter['rank']})")
        state = read_checkpoint(path)
        t = self.add_task(name or meta["name"], meta["num_classes"])
        if adapter["method"] == "full":
            self.load_state_dict({k: v for k, v in state.items() if ".tasks." not in k and k in self.state_dict()},
                                 strict=False)
        aff.load_task_state_dict(self, t, {k: v for k, v in state.items() if k in self.task_state_dict(t)})
        return t

    def merge_task(self, task: int | str) -> DiT:
        """A new plain DiT for one task: Affiner scale/shift (and linear branches) folded into the weights, the
        task's class table as the model's (its null row last). ReLU branches stay as Branched layers (recorded in
        the config as a merged adapter). Outputs equal the adapted model's for that task."""
        t = self.task_index(task)
        if t < 0:
            raise ValueError("merge_task needs a task id >= 0")
        merged = copy.deepcopy(self)
        aff.set_task_routing(merged, None)
        aff.merge_task(merged, t)
        adapter = self.config.adapter
        branches = any(isinstance(m, (aff.BranchedLinear, aff.BranchedConv2d)) for m in merged.modules())
        merged.register_to_config(num_classes=int(self.config.tasks[t]["num_classes"]),
                                  class_dropout_prob=self.config.class_dropout_prob or 0.1, tasks=None,
                                  adapter={**adapter, "merged": True} if branches else None)
        for p in merged.parameters():
            p.requires_grad_(True)
        return merged

    def parameter_counts(self) -> dict[str, int]:
        """{"base": parameters of the base model (our shared-embedder layout), "task": parameters per task (first
        task), "trainable": parameters with requires_grad}."""
        task_params = {id(p) for _, m in aff.task_modules(self) for p in m.tasks.parameters()}
        base = sum(p.numel() for p in self.parameters() if id(p) not in task_params)
        per_task = sum(p.numel() for p in aff.task_state_dict(self, 0).values()) if aff.num_tasks(self) else 0
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {"base": base, "task": per_task, "trainable": trainable}

    # ---- other layouts -------------------------------------------------------------------------------------------

    @classmethod
    def from_diffusers(cls, path: str | os.PathLike, block_embedders: bool | None = None) -> DiT:
        """Load a diffusers ``DiTTransformer2DModel`` folder (``config.json`` + weights; a pipeline folder with a
        ``transformer/`` sub-folder works too), offline. ``block_embedders`` None: shared embedders when every
        block's copy is identical (the released DiT weights), one per block otherwise."""
        path = Path(path)
        if (path / "transformer" / "config.json").is_file():
            path = path / "transformer"
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"no diffusers config.json in {path}")
        cfg = json.loads(cfg_file.read_text())
        weights = next((path / n for n in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
                        if (path / n).is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"no diffusion_pytorch_model.safetensors/.bin in {path}")
        state = read_checkpoint(weights)
        return cls.from_diffusers_state(state, cfg, block_embedders)

    @classmethod
    def from_diffusers_state(cls, state: dict, config: dict, block_embedders: bool | None = None) -> DiT:
        """Build from a diffusers DiT state dict and its ``config.json`` dict (see :meth:`from_diffusers`)."""
        unsupported = {"norm_type": "ada_norm_zero", "activation_fn": "gelu-approximate",
                       "norm_elementwise_affine": False}
        for key, want in unsupported.items():
            if config.get(key, want) != want:
                raise ValueError(f"diffusers DiT with {key}={config[key]!r} is not supported (only {want!r})")
        in_ch = int(config.get("in_channels", 4))
        out_ch = int(config.get("out_channels") or in_ch)
        hidden = int(config.get("num_attention_heads", 16)) * int(config.get("attention_head_dim", 72))
        if block_embedders is None:
            block_embedders = not _diffusers_embedders_shared(state)
        model = cls(sample_size=int(config.get("sample_size", 32)), patch_size=int(config.get("patch_size", 2)),
                    in_channels=in_ch, learn_sigma=out_ch == 2 * in_ch, num_layers=int(config.get("num_layers", 28)),
                    hidden_size=hidden, num_heads=int(config.get("num_attention_heads", 16)),
                    mlp_ratio=state["transformer_blocks.0.ff.net.0.proj.weight"].shape[0] / hidden,
                    num_classes=int(config.get("num_embeds_ada_norm", 1000)), class_dropout_prob=0.1,
                    qkv_bias=bool(config.get("attention_bias", True)), timestep_freq_shift=1.0,
                    mlp_norm_eps=float(config.get("norm_eps", 1e-5)), block_embedders=block_embedders)
        if out_ch not in (in_ch, 2 * in_ch):
            raise ValueError(f"out_channels {out_ch} must be in_channels {in_ch} or twice it")
        return load_weights(model, state, checkpoint_filter_fn)


def _diffusers_embedders_shared(state: dict) -> bool:
    prefix = "transformer_blocks.0.norm1.emb."
    first = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    n = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("transformer_blocks."))
    return all(torch.equal(state[f"transformer_blocks.{i}.norm1.emb.{k}"], v) for i in range(1, n)
               for k, v in first.items())


_DIFFUSERS_EMB = {"timestep_embedder.linear_1": "t_embedder.mlp.0", "timestep_embedder.linear_2": "t_embedder.mlp.2",
                  "class_embedder.embedding_table": "y_embedder.embedding_table"}
_DIFFUSERS_BLOCK = {"norm1.linear": "adaLN_modulation.1", "attn1.to_out.0": "attn.proj", "ff.net.0.proj": "mlp.fc1",
                    "ff.net.2": "mlp.fc2"}
_DIFFUSERS_TOP = {"pos_embed.proj": "x_embedder.proj", "proj_out_1": "final_layer.adaLN_modulation.1",
                  "proj_out_2": "final_layer.linear"}


def checkpoint_filter_fn(state_dict: dict, model: DiT) -> dict:
    """Official DiT or diffusers DiTTransformer2DModel keys → ours; our own keys pass unchanged.

    Official: identical names except the fixed ``pos_embed`` parameter (dropped: we recompute it).
    Diffusers: q/k/v concatenated into ``attn.qkv``; the per-block embedders become ours (block 0's copy when the
    model shares them — refused when the copies differ).
    """
    state = {k: v for k, v in state_dict.items() if k != "pos_embed"}
    if not any(k.startswith("transformer_blocks.") for k in state):
        return state
    per_block = model.config.block_embedders
    if not per_block and not _diffusers_embedders_shared(state):
        raise CheckpointError("this diffusers DiT has different timestep/class embedders in each block; load it "
                              "with block_embedders=True (DiT.from_diffusers chooses automatically)")
    out = {}
    for k, v in state.items():
        parts = k.split(".")
        if parts[0] != "transformer_blocks":
            stem, leaf = k.rsplit(".", 1)
            if stem not in _DIFFUSERS_TOP:
                raise CheckpointError(f"unexpected key in diffusers DiT checkpoint: {k}")
            out[f"{_DIFFUSERS_TOP[stem]}.{leaf}"] = v
            continue
        i, rest = parts[1], ".".join(parts[2:])
        stem, leaf = rest.rsplit(".", 1)
        if stem.startswith("norm1.emb."):
            name = _DIFFUSERS_EMB[stem[len("norm1.emb."):]]
            if per_block:
                out[f"blocks.{i}.{name}.{leaf}"] = v
            elif i == "0":
                out[f"{name}.{leaf}"] = v
        elif stem in ("attn1.to_q", "attn1.to_k", "attn1.to_v"):
            if stem == "attn1.to_q":
                out[f"blocks.{i}.attn.qkv.{leaf}"] = torch.cat(
                    [state[f"transformer_blocks.{i}.attn1.to_{c}.{leaf}"] for c in "qkv"], dim=0)
        elif stem in _DIFFUSERS_BLOCK:
            out[f"blocks.{i}.{_DIFFUSERS_BLOCK[stem]}.{leaf}"] = v
        else:
            raise CheckpointError(f"unexpected key in diffusers DiT checkpoint: {k}")
    return out


def official_build(state: dict, config: dict) -> DiT:
    """Infer patch size, channels, width, depth, MLP ratio, classes and learned σ from the shapes (the official
    layout, or diffusers' when its keys are given); num_heads, class_dropout_prob and input_size (when the
    checkpoint has no ``pos_embed``) from ``config`` (official defaults 16, 0.1, 32)."""
    if "transformer_blocks.0.norm1.linear.weight" in state:
        hidden, in_ch, p, _ = state["pos_embed.proj.weight"].shape
        heads = int(config.get("num_attention_heads", config.get("num_heads", 16)))
        dcfg = {"in_channels": in_ch, "patch_size": p, "num_attention_heads": heads,
                "attention_head_dim": hidden // heads,
                "out_channels": state["proj_out_2.weight"].shape[0] // (p * p),
                "num_layers": 1 + max(int(k.split(".")[1]) for k in state if k.startswith("transformer_blocks.")),
                "num_embeds_ada_norm": state["transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight"]
                .shape[0] - 1, **config}
        return DiT.from_diffusers_state(state, dcfg)
    hidden, in_ch, p, _ = state["x_embedder.proj.weight"].shape
    out_ch = state["final_layer.linear.weight"].shape[0] // (p * p)
    drop = float(config.get("class_dropout_prob", 0.1))
    rows = state["y_embedder.embedding_table.weight"].shape[0]
    input_size = int(config.get("input_size", 32))
    if "pos_embed" in state:
        input_size = int(round(state["pos_embed"].shape[1] ** 0.5)) * p
    model = DiT(sample_size=input_size, patch_size=p, in_channels=in_ch, learn_sigma=out_ch == 2 * in_ch,
                num_layers=1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks.")),
                hidden_size=hidden, num_heads=int(config.get("num_heads", 16)),
                mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / hidden,
                num_classes=rows - int(drop > 0), class_dropout_prob=drop)
    return load_weights(model, state, checkpoint_filter_fn)
