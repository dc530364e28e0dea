"""The DiffScaler Affiner: per-task scale, shift and low-rank ReLU branch on frozen ``nn.Linear``/``nn.Conv2d``.

For a frozen layer with weight W and bias b̂, task t computes (specs/diffscaler.md §4.1)::

    y = (1 + a[t]) ⊙ W x + b̂ + b[t] + s[t] · up[t] · act(down[t] · x)

with ``a`` per output channel (or a scalar), ``b`` per output channel, ``down`` (r, in) ~ N(0, 1/in), ``up`` (out, r)
zero-initialised and ``s`` a learned scalar (init 1) or a fixed number. At initialisation every task reproduces the
frozen layer bit for bit. Samples of one batch may belong to different tasks: :func:`route_tasks` (or the model's
``task_ids`` argument) routes each sample to its task's parameters; task id -1 means the frozen base layer.

The same module expresses the baselines: DiffFit/BitFit (rank 0, scale and/or shift only) and LoRA (identity
activation, fixed s = α/r, no scale or shift). Rules map module-name patterns to settings (:class:`AffinerConfig`).
"""
from __future__ import annotations

import contextlib
import math
import fnmatch
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AffinerConfig", "Affiner", "AffinerLinear", "AffinerConv2d", "TaskLabelEmbedder", "BranchedLinear",
           "BranchedConv2d", "TaskRouting", "apply_adapters", "apply_diffscaler", "set_trainable_tasks", "route_tasks",
           "set_task_routing", "task_modules", "num_tasks", "add_task", "task_state_dict", "load_task_state_dict", "merge_task",
           "rule_for", "build_merged_branches"]


@dataclass(frozen=True)
class AffinerConfig:
    """Settings of the Affiners one rule creates.

    Attributes:
        rank: r of the branch; 0 disables it.
        scale_mode: ``"channel"`` (a of shape (out,)), ``"scalar"`` (a of shape (1,)) or ``"none"``.
        shift: learn the additional bias b (out,).
        branch_act: ``"relu"`` (DiffScaler: a new non-linear subspace, not mergeable) or ``"identity"`` (LoRA-like,
            mergeable into W).
        branch_scale: ``None`` for a learned per-task scalar s (init 1); a number for a fixed s (LoRA's α/r).
    """

    rank: int = 8
    scale_mode: str = "channel"
    shift: bool = True
    branch_act: str = "relu"
    branch_scale: float | None = None

    def __post_init__(self):
        if self.scale_mode not in ("channel", "scalar", "none"):
            raise ValueError(f"scale_mode must be 'channel', 'scalar' or 'none', got '{self.scale_mode}'")
        if self.branch_act not in ("relu", "identity"):
            raise ValueError(f"branch_act must be 'relu' or 'identity', got '{self.branch_act}'")
        if self.rank < 0:
            raise ValueError(f"rank must be >= 0, got {self.rank}")
        if self.rank == 0 and self.scale_mode == "none" and not self.shift:
            raise ValueError("an Affiner with rank 0, no scale and no shift has no parameters")


class TaskRouting:
    """Which samples of a batch go to which task.

    Args:
        task_ids: (B,) int64, each in [-1, num_tasks); -1 = the frozen base model.
        num_tasks: number of task parameter sets in the model.
    Attributes:
        single: the task id when the whole batch has one task (fast path), else None.
        groups: [(task id, (n_t,) int64 sample indices)] for every task present.
    """

    def __init__(self, task_ids: torch.Tensor, num_tasks: int):
        if task_ids.ndim != 1 or task_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"task_ids must be a (B,) integer tensor, got {tuple(task_ids.shape)} {task_ids.dtype}")
        ids = task_ids.long()
        present = sorted(set(ids.tolist()))
        bad = [t for t in present if not -1 <= t < num_tasks]
        if bad:
            raise ValueError(f"task ids {bad} out of range: the model has {num_tasks} task(s) (ids 0..{num_tasks - 1}, "
                             f"-1 for the base model)")
        self.task_ids = ids
        self.single = present[0] if len(present) == 1 else None
        self.groups = [(t, (ids == t).nonzero().squeeze(1)) for t in present]


class _TaskModule(nn.Module):
    """Common routing logic of modules holding per-task parameters in ``self.tasks`` (an nn.ModuleList)."""

    routing: TaskRouting | None = None

    def _base(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _task(self, task: nn.Module, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample routed forward; x's first dimension is the batch."""
        h = self._base(x)
        routing = self.routing
        if routing is None:
            return h
        if routing.single is not None:
            return h if routing.single < 0 else self._task(self.tasks[routing.single], x, h)
        if routing.task_ids.shape[0] != x.shape[0]:
            raise ValueError(f"task_ids has {routing.task_ids.shape[0]} entries for a batch of {x.shape[0]}")
        out = None
        for t, idx in routing.groups:
            if t < 0:
                continue
            y = self._task(self.tasks[t], x.index_select(0, idx), h.index_select(0, idx))
            if out is None:
                # the dtype the single-task path returns (under autocast a bf16 base output meets float32 task
                # parameters); .to keeps h's memory format (channels-last conv outputs)
                out = h.to(torch.promote_types(h.dtype, y.dtype), copy=True)
            out.index_copy_(0, idx, y.to(out.dtype))
        return h if out is None else out


class AffinerTask(nn.Module):
    """One task's parameters for one layer: a, b, down, up, s (any of them may be absent per the config)."""

    def __init__(self, out_features: int, down_shape: tuple[int, ...], up_shape: tuple[int, ...],
                 cfg: AffinerConfig, like: torch.Tensor):
        super().__init__()
        kw = dict(device=like.device, dtype=like.dtype)
        if cfg.scale_mode != "none":
            self.a = nn.Parameter(torch.zeros(out_features if cfg.scale_mode == "channel" else 1, **kw))
        if cfg.shift:
            self.b = nn.Parameter(torch.zeros(out_features, **kw))
        if cfg.rank > 0:
            fan_in = math.prod(down_shape[1:])
            self.down = nn.Parameter(torch.randn(down_shape, **kw) * fan_in ** -0.5)
            self.up = nn.Parameter(torch.zeros(up_shape, **kw))
            if cfg.branch_scale is None:
                self.s = nn.Parameter(torch.ones((), **kw))


class Affiner(_TaskModule):
    """Base class: a frozen layer (``weight``, ``bias`` keep the layer's key names) plus ``tasks`` (one
    :class:`AffinerTask` each). Subclasses define the layer op and the branch ops."""

    def __init__(self, layer: nn.Module, num_tasks: int, cfg: AffinerConfig):
        super().__init__()
        self.cfg = cfg
        self.weight = layer.weight
        self.bias = layer.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.tasks = nn.ModuleList(self.new_task() for _ in range(num_tasks))

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def new_task(self) -> AffinerTask:
        """A fresh zero-start parameter set (its output equals the frozen layer's)."""
        raise NotImplementedError

    def _view(self, v: torch.Tensor) -> torch.Tensor:
        """Broadcast an (out,) vector over the output's trailing layout."""
        raise NotImplementedError

    def _down(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _up(self, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _task(self, task: AffinerTask, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """h + a⊙(W x) + b + s·up(act(down x)), with W x = h − b̂ (h is the frozen layer's own output, so the zero
        start reproduces it exactly)."""
        out = h
        if hasattr(task, "a"):
            wx = h if self.bias is None else h - self._view(self.bias)
            out = out + self._view(task.a) * wx
        if hasattr(task, "b"):
            out = out + self._view(task.b)
        if hasattr(task, "down"):
            z = self._down(x, task.down)
            if self.cfg.branch_act == "relu":
                z = F.relu(z)
            s = task.s if hasattr(task, "s") else self.cfg.branch_scale
            out = out + s * self._up(z, task.up)
        return out

    @torch.no_grad()
    def merged_weights(self, t: int) -> tuple[torch.Tensor, torch.Tensor | None, tuple | None]:
        """Task ``t`` folded into plain weights: (W', b', branch) with W' = diag(1+a)·W (+ s·up·down when the
        branch is linear), b' = b̂ + b, and branch = (down, s·up) when the ReLU branch must stay separate."""
        task = self.tasks[t]
        w = self.weight.detach().clone()
        if hasattr(task, "a"):
            w = w * (1 + task.a).view(-1, *([1] * (w.ndim - 1)))
        bias = None if self.bias is None else self.bias.detach().clone()
        if hasattr(task, "b"):
            bias = task.b.detach().clone() if bias is None else bias + task.b
        branch = None
        if hasattr(task, "down"):
            s = task.s if hasattr(task, "s") else self.cfg.branch_scale
            up = s * task.up.detach()
            if self.cfg.branch_act == "identity":
                w = w + torch.einsum("or,r...->o...", up.flatten(1), task.down.detach())
            else:
                branch = (task.down.detach().clone(), up.clone())
        return w, bias, branch


class AffinerLinear(Affiner):
    """Affiner on an ``nn.Linear(in, out)``: x (..., in) → (..., out)."""

    def __init__(self, layer: nn.Linear, num_tasks: int, cfg: AffinerConfig):
        self.in_features = layer.in_features
        super().__init__(layer, num_tasks, cfg)

    def new_task(self) -> AffinerTask:
        r = self.cfg.rank
        return AffinerTask(self.out_features, (r, self.in_features), (self.out_features, r), self.cfg, self.weight)

    def _base(self, x):
        return F.linear(x, self.weight, self.bias)

    def _view(self, v):
        return v

    def _down(self, x, w):
        return F.linear(x, w)

    def _up(self, z, w):
        return F.linear(z, w)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, tasks={len(self.tasks)}, {self.cfg}"


class AffinerConv2d(Affiner):
    """Affiner on an ``nn.Conv2d`` (groups 1, zero padding): down is a conv with the layer's kernel, stride,
    padding and dilation (in → r), up a 1x1 conv (r → out); a and b broadcast over H×W.
    (B, in, H, W) → (B, out, H', W')."""

    def __init__(self, layer: nn.Conv2d, num_tasks: int, cfg: AffinerConfig):
        if layer.groups != 1 or layer.padding_mode != "zeros":
            raise ValueError(f"the Conv2d Affiner needs groups=1 and zero padding, got groups={layer.groups}, "
                             f"padding_mode='{layer.padding_mode}'")
        self.conv_args = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation)
        super().__init__(layer, num_tasks, cfg)

    def new_task(self) -> AffinerTask:
        r, (out, cin, kh, kw) = self.cfg.rank, self.weight.shape
        return AffinerTask(out, (r, cin, kh, kw), (out, r, 1, 1), self.cfg, self.weight)

    def _base(self, x):
        return F.conv2d(x, self.weight, self.bias, **self.conv_args)

    def _view(self, v):
        return v.view(1, -1, 1, 1)

    def _down(self, x, w):
        return F.conv2d(x, w, None, **self.conv_args)

    def _up(self, z, w):
        return F.conv2d(z, w)

    def extra_repr(self) -> str:
        return f"weight={tuple(self.weight.shape)}, tasks={len(self.tasks)}, {self.cfg}"


class TaskLabelEmbedder(_TaskModule):
    """Per-task class-embedding tables around a frozen class embedder.

    The wrapped module must hold ``embedding_table`` (nn.Embedding) whose last row is its null (unconditional)
    embedding. Task t gets its own table of ``num_classes_t + 1`` rows (its null row last), every row initialised
    from the base null row. labels (B,) int64 → (B, D).
    """

    def __init__(self, embedder: nn.Module, task_classes: Sequence[int]):
        super().__init__()
        self.embedding_table = embedder.embedding_table
        self.embedding_table.weight.requires_grad_(False)
        object.__setattr__(self, "embedder", embedder)  # unregistered: merge_task gives it a task's table back
        self.tasks = nn.ModuleList()
        for n in task_classes:
            self.add(n)

    def add(self, num_classes: int) -> None:
        """Append a task table of ``num_classes + 1`` rows, all copies of the base null row."""
        null = self.embedding_table.weight.detach()[-1]
        task = nn.Module()
        task.table = nn.Parameter(null.expand(int(num_classes) + 1, -1).clone())
        self.tasks.append(task)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """labels (B,) int64, each within its task's table → (B, D)."""
        routing = self.routing
        if routing is None or routing.single is not None:
            t = -1 if routing is None else routing.single
            return self.embedding_table(labels) if t < 0 else F.embedding(labels, self.tasks[t].table)
        out = None
        for t, idx in routing.groups:
            table = self.embedding_table.weight if t < 0 else self.tasks[t].table
            emb = F.embedding(labels.index_select(0, idx), table)
            out = emb.new_zeros(labels.shape[0], emb.shape[1]) if out is None else out
            out = out.index_copy(0, idx, emb)
        return out


class BranchedLinear(nn.Linear):
    """A plain linear layer plus a fixed ReLU branch: y = W x + b + up·ReLU(down·x) (a merged single-task
    Affiner whose branch cannot fold into W). Keys: weight, bias, down, up."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__(in_features, out_features, bias)
        self.down = nn.Parameter(torch.zeros(rank, in_features))
        self.up = nn.Parameter(torch.zeros(out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) → (..., out)."""
        return super().forward(x) + F.linear(F.relu(F.linear(x, self.down)), self.up)


class BranchedConv2d(nn.Conv2d):
    """A plain conv plus a fixed ReLU branch (down: the conv's kernel, in → r; up: 1x1, r → out)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, rank: int, **kwargs):
        super().__init__(in_channels, out_channels, kernel_size, **kwargs)
        self.down = nn.Parameter(torch.zeros(rank, in_channels, *self.kernel_size))
        self.up = nn.Parameter(torch.zeros(out_channels, rank, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in, H, W) → (B, out, H', W')."""
        z = F.conv2d(x, self.down, None, self.stride, self.padding, self.dilation)
        return super().forward(x) + F.conv2d(F.relu(z), self.up)


# ---------------------------------------------------------------------------------------------------------------
# Applying, routing, persisting and merging


def rule_for(name: str, rules: Sequence[dict]) -> AffinerConfig | None:
    """The settings of the first rule whose ``targets`` patterns match module ``name`` and whose ``exclude``
    patterns do not (shell-style patterns over the dotted module name); None when no rule matches."""
    for rule in rules:
        if any(fnmatch.fnmatchcase(name, p) for p in rule.get("targets", ())) and \
                not any(fnmatch.fnmatchcase(name, p) for p in rule.get("exclude", ())):
            return AffinerConfig(**{k: v for k, v in rule.items() if k not in ("targets", "exclude")})
    return None


def _set_child(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def apply_adapters(model: nn.Module, rules: Sequence[dict], num_tasks: int = 1,
                   task_classes: Sequence[int] | None = None, label_embedder_types: tuple = ()) -> nn.Module:
    """Wrap every ``nn.Linear`` / ``nn.Conv2d`` a rule selects with an Affiner of ``num_tasks`` zero-start tasks and
    freeze all base parameters (in place).

    Args:
        rules: [{"targets": [patterns], "exclude": [patterns], **AffinerConfig fields}]; first match wins.
        num_tasks: task parameter sets to create (``len(task_classes)`` when that is given).
        task_classes: classes per task (0 = unconditional); class embedders of ``label_embedder_types`` get per-task
            tables of ``n + 1`` rows.
    Returns:
        ``model``; its outputs are unchanged for every task until task parameters are trained.
    """
    if task_classes is not None:
        num_tasks = len(task_classes)
    for name, module in list(model.named_modules()):
        if isinstance(module, (_TaskModule, BranchedLinear, BranchedConv2d)) or \
                any(isinstance(p, _TaskModule) for p in _parents(model, name)):
            continue
        if type(module) in (nn.Linear, nn.Conv2d):
            cfg = rule_for(name, rules)
            if cfg is not None:
                cls = AffinerLinear if isinstance(module, nn.Linear) else AffinerConv2d
                _set_child(model, name, cls(module, num_tasks, cfg))
        elif label_embedder_types and isinstance(module, label_embedder_types):
            _set_child(model, name, TaskLabelEmbedder(module, task_classes or [0] * num_tasks))
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _parents(model: nn.Module, name: str) -> Iterator[nn.Module]:
    parts = name.split(".")
    for i in range(1, len(parts)):
        yield model.get_submodule(".".join(parts[:i]))


DEFAULT_TARGETS = ("blocks.*", "final_layer.*")
DEFAULT_EXCLUDE = ("*embedder*",)


def apply_diffscaler(model: nn.Module, num_tasks: int, rank: int = 8, targets: Sequence[str] = DEFAULT_TARGETS,
                     exclude: Sequence[str] = DEFAULT_EXCLUDE, trainable_tasks: Sequence[int] | str = "all",
                     **options) -> nn.Module:
    """DiffScaler's Affiner on every Linear/Conv2d under ``targets`` (DiT default: all block linears — qkv, proj,
    fc1, fc2, adaLN — and the final layer's), in place. The base is frozen and the task parameters are left
    trainable, ready for an optimiser (as peft's ``get_peft_model`` leaves its adapters): all tasks by default, or
    the task ids in ``trainable_tasks`` (``[]``: nothing trainable; see :func:`set_trainable_tasks`).
    ``options``: other :class:`AffinerConfig` fields. For a DiT prefer :meth:`DiT.apply_adapter`, which also keeps
    its config and class tables in sync."""
    rule = {"targets": list(targets), "exclude": list(exclude), "rank": rank, **options}
    apply_adapters(model, [rule], num_tasks)
    set_trainable_tasks(model, range(num_tasks) if trainable_tasks == "all" else trainable_tasks)
    return model


def set_trainable_tasks(model: nn.Module, tasks: Iterable[int] | None, base: bool = False) -> None:
    """Make exactly the parameters of the task ids ``tasks`` trainable (None or empty: no task), and the base
    parameters too when ``base`` (full fine-tuning); base class tables of task label embedders stay frozen."""
    ids = set(tasks or ())
    for p in model.parameters():
        p.requires_grad_(base)
    for _, m in task_modules(model):
        for i, task in enumerate(m.tasks):
            task.requires_grad_(i in ids)
        if isinstance(m, TaskLabelEmbedder):
            m.embedding_table.weight.requires_grad_(False)


def task_modules(model: nn.Module) -> list[tuple[str, _TaskModule]]:
    """(name, module) of every module holding per-task parameters."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _TaskModule)]


def num_tasks(model: nn.Module) -> int:
    """Number of task parameter sets (0 for a model without adapters)."""
    counts = {len(m.tasks) for _, m in task_modules(model)}
    if len(counts) > 1:
        raise RuntimeError(f"inconsistent task counts across adapters: {sorted(counts)}")
    return counts.pop() if counts else 0


def set_task_routing(model: nn.Module, task_ids: torch.Tensor | None) -> None:
    """Route the samples of the next forward passes: ``task_ids`` (B,) in [-1, T); None clears the routing (every
    sample uses the base layers). The routing stays until changed, so gradient-checkpoint recomputation sees it."""
    mods = task_modules(model)
    routing = None if task_ids is None else TaskRouting(task_ids, num_tasks(model))
    for _, m in mods:
        m.routing = routing


@contextlib.contextmanager
def route_tasks(model: nn.Module, task_ids: torch.Tensor | None):
    """Context manager around :func:`set_task_routing` for models that do not take ``task_ids`` themselves."""
    set_task_routing(model, task_ids)
    try:
        yield model
    finally:
        set_task_routing(model, None)


def add_task(model: nn.Module, num_classes: int = 0) -> int:
    """Append one zero-start task to every adapter (other tasks' parameters are not touched); returns its id."""
    t = num_tasks(model)
    for _, m in task_modules(model):
        if isinstance(m, Affiner):
            m.tasks.append(m.new_task())
        else:
            m.add(num_classes)
    return t


def task_state_dict(model: nn.Module, t: int) -> dict[str, torch.Tensor]:
    """Task ``t``'s parameters, keyed ``<module>.<param>`` (e.g. ``blocks.0.attn.qkv.a``, ``y_embedder.table``)."""
    out = {}
    for name, m in task_modules(model):
        for pname, p in m.tasks[t].named_parameters():
            out[f"{name}.{pname}"] = p.detach()
    return out


@torch.no_grad()
def load_task_state_dict(model: nn.Module, t: int, state: dict[str, torch.Tensor]) -> None:
    """Load :func:`task_state_dict`-style tensors into task slot ``t`` (strict: names and shapes must match;
    class tables may differ in size from the slot and replace it)."""
    own = task_state_dict(model, t)
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise KeyError(f"task weights do not fit the model's adapters: missing {missing[:5]}, unexpected "
                       f"{unexpected[:5]} (different adapter method/placement?)")
    for name, m in task_modules(model):
        task = m.tasks[t]
        for pname, p in task.named_parameters():
            src = state[f"{name}.{pname}"]
            if pname == "table" and src.shape != p.shape:
                setattr(task, pname, nn.Parameter(src.to(p), requires_grad=p.requires_grad))
            elif src.shape != p.shape:
                raise ValueError(f"{name}.{pname}: shape {tuple(src.shape)} vs {tuple(p.shape)}")
            else:
                p.copy_(src)


@torch.no_grad()
def merge_task(model: nn.Module, t: int) -> nn.Module:
    """Replace every adapter by task ``t`` folded into plain layers (in place): Linear/Conv2d with W' = diag(1+a)·W
    (+ s·up·down for linear branches) and b' = b̂ + b, :class:`BranchedLinear`/:class:`BranchedConv2d` where a ReLU
    branch remains, and the class embedder's table replaced by the task's. Returns ``model``."""
    for name, m in task_modules(model):
        if isinstance(m, Affiner):
            w, b, branch = m.merged_weights(t)
            if isinstance(m, AffinerLinear):
                layer = (BranchedLinear(m.in_features, m.out_features, branch[0].shape[0], bias=b is not None)
                         if branch else nn.Linear(m.in_features, m.out_features, bias=b is not None))
            else:
                out, cin, kh, kw = w.shape
                kwargs = dict(bias=b is not None, **m.conv_args)
                layer = (BranchedConv2d(cin, out, (kh, kw), branch[0].shape[0], **kwargs) if branch
                         else nn.Conv2d(cin, out, (kh, kw), **kwargs))
            layer = layer.to(w)
            layer.weight.copy_(w)
            if b is not None:
                layer.bias.copy_(b)
            if branch:
                layer.down.copy_(branch[0])
                layer.up.copy_(branch[1])
        else:
            layer = m.embedder
            layer.embedding_table = nn.Embedding.from_pretrained(m.tasks[t].table.detach().clone(), freeze=False)
        _set_child(model, name, layer)
    return model


def build_merged_branches(model: nn.Module, rules: Sequence[dict]) -> nn.Module:
    """Give every layer that :func:`merge_task` turns into a Branched layer under ``rules`` that form, with zero
    branches (in place) — so a merged model can be rebuilt from its config before its weights are loaded."""
    for name, module in list(model.named_modules()):
        if type(module) not in (nn.Linear, nn.Conv2d):
            continue
        cfg = rule_for(name, rules)
        if cfg is None or cfg.rank == 0 or cfg.branch_act != "relu":
            continue
        if isinstance(module, nn.Linear):
            layer = BranchedLinear(module.in_features, module.out_features, cfg.rank, bias=module.bias is not None)
        else:
            layer = BranchedConv2d(module.in_channels, module.out_channels, module.kernel_size, cfg.rank,
                                   stride=module.stride, padding=module.padding, dilation=module.dilation,
                                   bias=module.bias is not None)
        _set_child(model, name, layer.to(module.weight))
    return model


def rules_json(rules: Sequence[dict]) -> str:
    """Canonical JSON of a rule list (for comparing the adapters of a saved task with a model's)."""
    canon = [dict(sorted({**asdict(AffinerConfig(**{k: v for k, v in r.items() if k not in ("targets", "exclude")})),
                          "targets": list(r.get("targets", ())), "exclude": list(r.get("exclude", ()))}.items()))
             for r in rules]
    return json.dumps(canon, sort_keys=True)
