"""SReT: Sliced Recursive Transformer (Shen, Liu, Xing, ECCV 2022, arXiv 2111.05297).

A small hierarchical ViT without class token: a 3-conv stem (stride 8), three stages whose transformer blocks are
**shared across depth** (each shared block is applied ``loops`` times, every use followed by its own light MLP, the
"NLL"), **sliced group self-attention** (attention inside contiguous slices of the raster token sequence, through the
shared attention op with one window per slice), grouped-conv pooling between stages, global average pooling,
LayerNorm and a linear head.

Eval-time randomness of the reference: in the second use of a shared block (list positions 2, 6, 10, … of a stage),
with ``groups2 > 1``, the tokens are shuffled by ``torch.randperm(N)`` before slicing — also in eval mode, drawn from
the CPU default generator. :meth:`SReT.set_slice_permutation` chooses where the permutations come from: the default
reproduces the reference (same call sites and order, so ``torch.manual_seed`` before the forward reproduces it), a
``torch.Generator`` makes it deterministic, a callable injects permutations, ``"off"`` disables shuffling.

Checkpoints: the reference state dict lists a shared block under each list position it occupies (aliases of one
tensor); ours stores each shared block once. :func:`checkpoint_filter_fn` maps the official layout (and checks the
aliases agree), :func:`official_state_dict` writes it back.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models._features import feature_take_indices
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..kernels import attention
from ..layers.linear import linear
from ..zoo import CheckpointError, build_model, load_weights, register_family, register_model

__all__ = ["SReT", "checkpoint_filter_fn", "official_state_dict"]

PermSource = Callable[[int, int, int], torch.Tensor]


class ConvStem(nn.Module):
    """3 × [Conv2d 3x3 stride 2 (bias) → BatchNorm → ReLU]: channels in → C/2 → C → C.

    Shapes: (B, in_chans, H, W) → (B, C, H/8, W/8).
    """

    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        half = int(dim / 2)
        self.conv1, self.bn1 = nn.Conv2d(in_chans, half, 3, 2, 1), nn.BatchNorm2d(half)
        self.conv2, self.bn2 = nn.Conv2d(half, dim, 3, 2, 1), nn.BatchNorm2d(dim)
        self.conv3, self.bn3 = nn.Conv2d(dim, dim, 3, 2, 1), nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) → (B, C, H/8, W/8), channels-last in memory (faster CPU convolutions, and the
        token layout (B, h·w, C) is then a free view)."""
        x = x.contiguous(memory_format=torch.channels_last)
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            if self.training:
                x = F.relu(bn(conv(x)), inplace=True)
            else:  # BatchNorm folded into the convolution (one pass less per layer)
                x = F.relu(F.conv2d(x, *_fold_bn(conv, bn), conv.stride, conv.padding), inplace=True)
        return x


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of conv followed by eval-mode bn, as one convolution."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    return conv.weight * scale.view(-1, 1, 1, 1), (bias - bn.running_mean) * scale + bn.bias


class SlicedAttention(nn.Module):
    """Multi-head self-attention inside G contiguous slices of the token sequence (qkv and proj with bias).

    With a permutation p the tokens are reordered (token j of the shuffled sequence is token p[j]) before slicing
    and put back in place before ``proj``. G = 1 is ordinary global attention.

    Shapes: (B, N, C) → (B, N, C); N must be divisible by G.
    """

    def __init__(self, dim: int, num_heads: int, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, groups: int = 1, perm: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, C), ``groups`` slices, optional token permutation ``perm`` (N,) → (B, N, C)."""
        b, n, c = x.shape
        if n % groups:
            raise ValueError(f"{n} tokens cannot be cut into {groups} equal slices (SReT groups must divide the "
                             f"token count of their stage)")
        if perm is not None:
            perm = perm.to(x.device)
            x = x[:, perm]
        qkv = linear(x, self.qkv.weight, self.qkv.bias).reshape(b, groups, n // groups, 3, self.num_heads,
                                                                 c // self.num_heads)
        qkv = qkv.permute(3, 0, 1, 4, 2, 5)  # (3, B, G, H, N/G, D)
        y = attention(qkv[0], qkv[1], qkv[2]).permute(0, 1, 3, 2, 4).reshape(b, n, c)
        if perm is not None:
            y = y[:, torch.argsort(perm)]
        return self.proj_drop(linear(y, self.proj.weight, self.proj.bias))


def _mlp(mlp: Mlp, x: torch.Tensor) -> torch.Tensor:
    """The block MLP (fc1 → GELU → fc2); at inference with the GELU fused into fc1 (oneDNN path)."""
    if mlp.training:
        return mlp(x)
    return linear(linear(x, mlp.fc1.weight, mlp.fc1.bias, "gelu"), mlp.fc2.weight, mlp.fc2.bias)


class SharedBlock(nn.Module):
    """The recursively applied block, with four scalar learnable coefficients::

        x = coef1·x + coef2·DropPath(Attn(LN1(x)))
        x = coef3·x + coef4·DropPath(MLP(LN2(x)))

    LayerNorm eps 1e-6; MLP hidden ``int(dim * mlp_ratio)``. Shapes: (B, N, C) → (B, N, C).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SlicedAttention(dim, num_heads, drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        for i in range(1, 5):
            setattr(self, f"coef{i}", nn.Parameter(torch.ones(1)))

    def forward(self, x: torch.Tensor, groups: int = 1, perm: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, C) → (B, N, C)."""
        x = torch.addcmul(self.coef1 * x, self.coef2, self.drop_path(self.attn(self.norm1(x), groups, perm)))
        return torch.addcmul(self.coef3 * x, self.coef4, self.drop_path(_mlp(self.mlp, self.norm2(x))))


class NonLinearLayer(nn.Module):
    """The non-shared layer after every use of a shared block: x = coef1·x + coef2·MLP(LN(x)).

    Shapes: (B, N, C) → (B, N, C).
    """

    def __init__(self, dim: int, mlp_ratio: float, drop: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)
        self.coef1 = nn.Parameter(torch.ones(1))
        self.coef2 = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) → (B, N, C)."""
        return torch.addcmul(self.coef1 * x, self.coef2, _mlp(self.mlp, self.norm1(x)))


class SReTStage(nn.Module):
    """Optional grouped-conv downsampling, then ``recursive_num`` shared blocks each used ``loops`` times.

    Execution: for k in 0..R-1, for l in 0..loops-1: ``blocks[k]`` then ``nlls[k·loops + l]``. The use at pair
    index p (list position 2p of the reference) is *recursive* when p is odd (the reference's
    ``(position + 2) % 4 == 0``): it slices into ``groups2`` (shuffled when > 1) instead of ``groups1``.

    Shapes: (B, C_in, h, w) → (B, C, h', w') (h' = ⌈h/2⌉ when downsampling).
    """

    def __init__(self, in_dim: int, dim: int, num_heads: int, depth: int, recursive_num: int, groups1: int,
                 groups2: int, mlp_ratio: float, np_mlp_ratio: float, downsample: bool, drop: float = 0.0,
                 drop_path: Sequence[float] = ()):
        super().__init__()
        self.loops = int(depth / recursive_num)
        if self.loops < 1:
            raise ValueError(f"depth {depth} is smaller than recursive_num {recursive_num}")
        self.groups1, self.groups2 = groups1, groups2
        self.downsample = nn.Conv2d(in_dim, dim, 3, 2, 1, groups=in_dim) if downsample else nn.Identity()
        dp = list(drop_path) or [0.0] * recursive_num
        self.blocks = nn.ModuleList(SharedBlock(dim, num_heads, mlp_ratio, drop, dp[k])
                                    for k in range(recursive_num))
        self.nlls = nn.ModuleList(NonLinearLayer(dim, np_mlp_ratio, drop)
                                  for _ in range(recursive_num * self.loops))
        self.grad_checkpointing = False

    def _pair(self, x: torch.Tensor, p: int, groups: int, perm: torch.Tensor | None) -> torch.Tensor:
        return self.nlls[p](self.blocks[p // self.loops](x, groups, perm))

    def forward(self, x: torch.Tensor, perm_source: PermSource | None = None, stage: int = 0) -> torch.Tensor:
        """(B, C_in, h, w) → (B, C, h', w') channels-last in memory. ``perm_source(stage, position, N)`` gives
        shuffles (None: none)."""
        x = self.downsample(x)
        b, c, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        for p in range(len(self.nlls)):
            recursive = p % 2 == 1
            groups = self.groups2 if recursive else self.groups1
            perm = None
            if recursive and groups != 1 and perm_source is not None:
                perm = perm_source(stage, 2 * p, h * w)
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(self._pair, x, p, groups, perm, use_reentrant=False)
            else:
                x = self._pair(x, p, groups, perm)
        return x.unflatten(1, (h, w)).permute(0, 3, 1, 2)  # channels-last map, no copy


class SReT(nn.Module):
    """Sliced Recursive Transformer.

    Args:
        img_size: input side; the positional embedding covers the (img_size/8)² stem grid, so inputs must have
            exactly this size.
        in_chans, num_classes: input channels, classes (0: no classifier).
        base_dims, heads: per stage head dim and head count (width = base_dim · heads).
        depth, recursive_num: per stage NLL count D and shared block count R (each block used int(D/R) times).
        groups1, groups2: per stage slices of the first / the recursive use (1 = global attention).
        mlp_ratio, np_mlp_ratio: MLP ratios of the shared blocks and of the NLLs (hidden sizes truncated by int()).
        drop_rate: dropout after the embedding and in the MLPs/projections.
        drop_path_rate: stochastic depth; shared block k of a stage gets rate·(stage offset + k)/sum(depth).

    Shapes: (B, in_chans, img_size, img_size) → (B, num_classes).
    """

    def __init__(self, img_size: int = 224, in_chans: int = 3, num_classes: int = 1000,
                 base_dims: Sequence[int] = (32, 32, 32), heads: Sequence[int] = (2, 4, 8),
                 depth: Sequence[int] = (4, 10, 6), recursive_num: Sequence[int] = (2, 5, 3),
                 groups1: Sequence[int] = (8, 4, 1), groups2: Sequence[int] = (2, 1, 1), mlp_ratio: float = 3.6,
                 np_mlp_ratio: float = 1.0, drop_rate: float = 0.0, drop_path_rate: float = 0.1):
        super().__init__()
        n = len(depth)
        if not all(len(a) == n for a in (base_dims, heads, recursive_num, groups1, groups2)):
            raise ValueError("base_dims, heads, depth, recursive_num, groups1 and groups2 need one entry per stage")
        dims = [bd * h for bd, h in zip(base_dims, heads)]
        self.img_size, self.num_classes = img_size, num_classes
        self.num_features = self.head_hidden_size = dims[-1]
        grid = int(img_size / 8)
        self.pos_embed = nn.Parameter(torch.zeros(1, dims[0], grid, grid))
        self.patch_embed = ConvStem(in_chans, dims[0])
        self.pos_drop = nn.Dropout(drop_rate)
        total, offset = sum(depth), 0
        stages = []
        for s in range(n):
            dpr = [drop_path_rate * (offset + k) / total for k in range(recursive_num[s])]
            offset += depth[s]
            stages.append(SReTStage(dims[max(s - 1, 0)], dims[s], heads[s], depth[s], recursive_num[s], groups1[s],
                                    groups2[s], mlp_ratio, np_mlp_ratio, s > 0, drop_rate, dpr))
        self.stages = nn.ModuleList(stages)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(num_chs=dims[s], reduction=8 * 2 ** s, module=f"stages.{s}") for s in range(n)]
        self._perm_source: PermSource | None = _randperm_source(None)
        trunc_normal_(self.pos_embed, std=0.02)

    def set_slice_permutation(self, source: None | str | torch.Generator | PermSource = None) -> None:
        """Where the token shuffles of the recursive sliced passes come from.

        Args:
            source: ``None`` — ``torch.randperm(N)`` from the CPU default generator at the reference's call sites,
                in its order (stages ascending, positions ascending): reproduces the reference, also after
                ``torch.manual_seed``; a ``torch.Generator`` — the same draws from that generator (deterministic);
                a callable ``(stage, position, num_tokens) -> LongTensor (num_tokens,)`` — injected permutations
                (``position`` is the reference's list position 2, 6, 10, …); ``"off"`` — no shuffling.
        """
        if isinstance(source, str):
            if source != "off":
                raise ValueError(f"slice permutation source must be None, 'off', a Generator or a callable, "
                                 f"got {source!r}")
            self._perm_source = None
        elif source is None or isinstance(source, torch.Generator):
            self._perm_source = _randperm_source(source)
        elif callable(source):
            self._perm_source = source
        else:
            raise TypeError(f"slice permutation source must be None, 'off', a Generator or a callable, "
                            f"got {type(source).__name__}")

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for timm's layer-wise decay (``param_groups_layer_decay``): stem and embedding, then each
        stage, then the final norm; the classifier is last."""
        return dict(stem=r"^pos_embed|^patch_embed",
                    blocks=[(r"^stages\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier (average pooling is the only pooling)."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"SReT pools by averaging; global_pool={global_pool!r} is not supported")
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if x.shape[-2:] != self.pos_embed.shape[-2:]:
            raise ValueError(f"input of {tuple(x.shape[-2:])} stem cells does not match the positional embedding "
                             f"({tuple(self.pos_embed.shape[-2:])}): the model is built for {self.img_size}x"
                             f"{self.img_size} images (pass img_size= to build it for another size)")
        return self.pos_drop(x + self.pos_embed)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) → last stage map (B, C_last, H/32, W/32)."""
        x = self._stem(x)
        for s, stage in enumerate(self.stages):
            x = stage(x, self._perm_source, s)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Map (B, C, h, w) → average-pooled LayerNorm feature (B, C), or logits (B, num_classes)."""
        x = self.norm(x.mean(dim=(2, 3)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) → (B, num_classes)."""
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """Stage outputs (B, C_s, H/2^(s+3), W/2^(s+3)).

        Args:
            indices: last n stages (int), the listed stages, or all (None). ``norm`` is accepted for timm's API; the
                final LayerNorm acts on pooled features only, so intermediates are never normalised.
        Returns:
            the list, or (last stage map, list) unless ``intermediates_only``.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"SReT intermediates are NCHW maps, got output_fmt={output_fmt!r}")
        take, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages[:max_index + 1] if stop_early else self.stages
        x = self._stem(x)
        out = []
        for s, stage in enumerate(stages):
            x = stage(x, self._perm_source, s)
            if s in take:
                out.append(x)
        return out if intermediates_only else (x, out)

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last wanted one (and norm / head); returns the absolute indices."""
        take, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take


def _randperm_source(generator: torch.Generator | None) -> PermSource:
    def draw(stage: int, position: int, num_tokens: int) -> torch.Tensor:
        return torch.randperm(num_tokens, generator=generator)

    return draw


def _official_key(k: str, loops: Sequence[int]) -> str:
    """Map one official key to ours (``transformers.s.blocks.j.*``, ``pools.s.conv.*``, coefficients)."""
    parts = k.split(".")
    if parts[0] == "pools":  # pools.{s}.conv.{weight,bias}: the downsampling of the next stage
        return f"stages.{int(parts[1]) + 1}.downsample.{parts[-1]}"
    if parts[0] != "transformers":
        return k
    s, j, rest = int(parts[1]), int(parts[3]), parts[4:]
    if rest[0].startswith("coefficient"):
        rest = ["coef" + rest[0][len("coefficient"):]]  # coefficient{i}.bias → coef{i}
    p = j // 2
    where = f"blocks.{p // loops[s]}" if j % 2 == 0 else f"nlls.{p}"
    return ".".join([f"stages.{s}", where, *rest])


def checkpoint_filter_fn(state_dict: dict, model: SReT) -> dict:
    """Official SReT keys → ours.

    List position j of ``transformers.s.blocks`` is pair p = j // 2: even j → shared block p // loops (its two
    aliases must hold equal tensors), odd j → NLL p. ``pools.s.conv`` → ``stages.{s+1}.downsample``;
    ``coefficient{i}.bias`` → ``coef{i}``. Our own keys pass unchanged.

    Raises:
        CheckpointError naming the key when two aliases of a shared block differ.
    """
    loops = [stage.loops for stage in model.stages]
    out, source = {}, {}
    for k, v in state_dict.items():
        new = _official_key(k, loops)
        if new in out and not (v.is_meta or out[new].is_meta or torch.equal(v, out[new])):
            raise CheckpointError(f"{k} and {source[new]} are two uses of the same shared SReT block but hold "
                                  f"different tensors")
        out[new], source[new] = v, k
    return out


def official_state_dict(model: SReT) -> dict[str, torch.Tensor]:
    """Our weights in the official layout, every shared block emitted under each list position it occupies."""
    ours = model.state_dict()
    out = {}
    for k, v in ours.items():
        parts = k.split(".")
        if parts[0] != "stages":
            out[k] = v
            continue
        s, kind = int(parts[1]), parts[2]
        if kind == "downsample":
            out[f"pools.{s - 1}.conv.{parts[-1]}"] = v
            continue
        idx, rest = int(parts[3]), parts[4:]
        if rest[0].startswith("coef"):
            rest = [f"coefficient{rest[0][4:]}", "bias"]
        loops = model.stages[s].loops
        positions = [2 * (idx * loops + l) for l in range(loops)] if kind == "blocks" else [2 * idx + 1]
        for j in positions:
            out[".".join([f"transformers.{s}.blocks.{j}", *rest])] = v
    return out


def _create_sret(variant: str, pretrained: bool = False, **kwargs) -> SReT:
    return build_model(SReT, variant, pretrained, _ARCHS[variant], filter_fn=checkpoint_filter_fn, **kwargs)


def _official_detect(state: dict) -> bool:
    return "transformers.0.blocks.0.attn.qkv.weight" in state and "patch_embed.conv1.weight" in state


def _infer_ratio(hidden: list[int], dims: list[int], given: float | None, what: str) -> float:
    """A ratio r with int(dim · r) == hidden for every stage (the reference truncates), preferring ``given``."""
    guess = hidden[0] / dims[0]
    candidates = ([given] if given is not None else []) + [round(guess, d) for d in (1, 2, 3)] + [guess]
    for r in candidates:
        if all(int(d * r) == h for d, h in zip(dims, hidden)):
            return r
    raise CheckpointError(f"no {what} gives the hidden sizes {hidden} for widths {dims}")


def _infer_loops(state: dict, s: int, n_pairs: int) -> int:
    """Uses per shared block: how many leading pairs share block 0's weights (aliases hold the same tensor)."""
    first = state[f"transformers.{s}.blocks.0.attn.qkv.weight"]
    if first.is_meta:
        return 2  # every released variant
    loops = 1
    while loops < n_pairs and torch.equal(state[f"transformers.{s}.blocks.{2 * loops}.attn.qkv.weight"], first):
        loops += 1
    return loops


# heads per stage of the released variants, by stage widths (the head count is not stored in the weights)
_RELEASED_HEADS = {(64, 128, 256): (2, 4, 8), (126, 252, 504): (3, 6, 12)}


def _official_build(state: dict, config: dict) -> SReT:
    """Widths, stages, depths, MLP ratios, image size, classes and recursion from the weights; heads, slicing and
    the drop rates from the official kwargs (``SReT`` takes groups1/groups2; without them, the reference's
    ``RecursiveTransformer``, no slicing)."""
    n = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("transformers."))
    dims = [state[f"transformers.{s}.blocks.0.attn.qkv.weight"].shape[1] for s in range(n)]
    pairs = [1 + max(int(k.split(".")[3]) for k in state if k.startswith(f"transformers.{s}.blocks.")) // 2
             for s in range(n)]
    if "heads" in config:
        heads = list(config["heads"])
    elif tuple(dims) in _RELEASED_HEADS:
        heads = list(_RELEASED_HEADS[tuple(dims)])
    else:
        raise CheckpointError(f"the head count of SReT stages of widths {dims} is not stored in the weights; "
                              f"pass config={{'heads': [...]}}")
    if "recursive_num" in config and "depth" in config:
        recursive_num, depth = list(config["recursive_num"]), list(config["depth"])
    else:
        loops = [_infer_loops(state, s, pairs[s]) for s in range(n)]
        recursive_num, depth = [p // lp for p, lp in zip(pairs, loops)], pairs
    grid = state["pos_embed"].shape[-1]
    img_size = config.get("image_size", 8 * grid)
    if int(img_size / 8) != grid:
        raise CheckpointError(f"image_size {img_size} does not match the {grid}x{grid} positional embedding")
    mlp_hidden = [state[f"transformers.{s}.blocks.0.mlp.fc1.weight"].shape[0] for s in range(n)]
    np_hidden = [state[f"transformers.{s}.blocks.1.mlp.fc1.weight"].shape[0] for s in range(n)]
    args = dict(
        img_size=img_size, in_chans=state["patch_embed.conv1.weight"].shape[1],
        num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0,
        base_dims=[d // h for d, h in zip(dims, heads)], heads=heads, depth=depth, recursive_num=recursive_num,
        groups1=list(config.get("groups1", [1] * n)), groups2=list(config.get("groups2", [1] * n)),
        mlp_ratio=_infer_ratio(mlp_hidden, dims, config.get("mlp_ratio"), "mlp_ratio"),
        np_mlp_ratio=_infer_ratio(np_hidden, dims, config.get("np_mlp_ratio"), "np_mlp_ratio"),
        drop_rate=config.get("drop_rate", 0.0), drop_path_rate=config.get("drop_path_rate", 0.1))
    return load_weights(SReT(**args), state, checkpoint_filter_fn)


register_family("sret", _official_detect, _official_build, wrapper="model")

_T = dict(base_dims=(32, 32, 32), heads=(2, 4, 8), depth=(4, 10, 6), recursive_num=(2, 5, 3), mlp_ratio=3.6,
          np_mlp_ratio=1.0, drop_path_rate=0.1)
_LT = {**_T, "mlp_ratio": 4.0}
_S = dict(base_dims=(42, 42, 42), heads=(3, 6, 12), depth=(4, 10, 6), recursive_num=(2, 5, 3), mlp_ratio=3.0,
          np_mlp_ratio=2.0, drop_path_rate=0.2)
_SLICED = dict(groups1=(8, 4, 1), groups2=(2, 1, 1))
_NO_SLICE = dict(groups1=(1, 1, 1), groups2=(1, 1, 1))

_ARCHS = {
    "SReT_T": {**_T, **_SLICED}, "SReT_LT": {**_LT, **_SLICED}, "SReT_S": {**_S, **_SLICED},
    "SReT_T_distill": {**_T, **_SLICED}, "SReT_LT_distill": {**_LT, **_SLICED}, "SReT_S_distill": {**_S, **_SLICED},
    "SReT_T_wo_slice": {**_T, **_NO_SLICE, "drop_path_rate": 0.0},
    "SReT_LT_wo_slice": {**_LT, **_NO_SLICE, "drop_path_rate": 0.0},
    "SReT_S_wo_slice": {**_S, **_NO_SLICE},
    "SReT_T_wo_slice_distill": {**_T, **_NO_SLICE, "drop_path_rate": 0.0},
    "SReT_LT_wo_slice_distill": {**_LT, **_NO_SLICE, "drop_path_rate": 0.0},
    "SReT_T_wo_slice_distill_finetune384": {**_T, **_NO_SLICE, "drop_path_rate": 0.0, "img_size": 384},
    "SReT_S_wo_slice_finetune_384": {**_S, **_NO_SLICE, "img_size": 384},
    "SReT_S_wo_slice_distill_finetune512": {**_S, **_NO_SLICE, "img_size": 512},
}


def _cfg(variant: str, **kwargs) -> dict:
    size = _ARCHS[variant].get("img_size", 224)
    return {"input_size": (3, size, size), "num_classes": 1000, "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225), "crop_pct": 0.875 if size == 224 else 1.0, "interpolation": "bicubic",
            "first_conv": "patch_embed.conv1", "classifier": "head", "paper_ids": "arXiv:2111.05297", **kwargs}


default_cfgs = {name: _cfg(name) for name in _ARCHS}


@register_model
def SReT_T(pretrained: bool = False, **kwargs) -> SReT:  # noqa: N802 (official name)
    """SReT-T: widths 64/128/256, depth 4/10/6, 2/5/3 shared blocks, slices 8/4/1 then 2/1/1, MLP 3.6."""
    return _create_sret("SReT_T", pretrained, **kwargs)


@register_model
def SReT_LT(pretrained: bool = False, **kwargs) -> SReT:  # noqa: N802
    """SReT-LT: SReT-T with MLP ratio 4 (also released with groups1=(16, 14, 1), groups2=(1, 1, 1))."""
    return _create_sret("SReT_LT", pretrained, **kwargs)


@register_model
def SReT_S(pretrained: bool = False, **kwargs) -> SReT:  # noqa: N802
    """SReT-S: widths 126/252/504 (head dim 42), MLP 3, NLL ratio 2, drop path 0.2."""
    return _create_sret("SReT_S", pretrained, **kwargs)


@register_model
def SReT_T_distill(pretrained: bool = False, **kwargs) -> SReT:  # noqa: N802
    """SReT-T trained with soft-label distillation (same model)."""
    return _create_sret("SReT_T_distill", pretrained, **kwargs)


@register_model
def SReT_LT_distill(pretrained: bool = False, **kwargs) -> SReT:  # noqa: N802
    """SReT-LT, distilled."""
    return _create_sret("SReT_LT_distill", pretrained, **kwargs)


@register_model
def SReT_S_distill(pretrained: bool = False, **kwargs) -> SReT:  # noqa: N802
    """SReT-S, distilled."""
    return _create_sret("SReT_S_distill", pretrained, **kwargs)


@register_model
def SReT_T_wo_slice(pretrained: bool = False, **kwargs) -> SReT:  # noqa: N802
    """SReT-T with recursion but no slicing (global attention everywhere)."""
    return _create_sret("SReT_T_wo_slice", pretrained, **kwargs)


@register_model
def SReT_LT_wo_slice(pretrained: bool = False, **kwargs) -> SReT:  # noqa: N802
    """SReT-LT without slicing."""
    return _create_sret("SReT_LT_wo_slice", pretrained, **kwargs)


@register_model
def SReT_S_wo_slice(pretrained: bool = False, **kwargs) -> SReT:  # noqa: N802
    """SReT-S without slicing."""
    return _create_sret("SReT_S_wo_slice", pretrained, **kwargs)


@register_model
def SReT_T_wo_slice_distill(pretrained: bool = False, **kwargs) -> SReT:  # noqa: N802
    """SReT-T without slicing, distilled."""
    return _create_sret("SReT_T_wo_slice_distill", pretrained, **kwargs)


@register_model
def SReT_LT_wo_slice_distill(pretrained: bool = False, **kwargs) -> SReT:  # noqa: N802
    """SReT-LT without slicing, distilled."""
    return _create_sret("SReT_LT_wo_slice_distill", pretrained, **kwargs)


@register_model
def SReT_T_wo_slice_distill_finetune384(pretrained: bool = False, **kwargs) -> SReT:  # noqa: N802
    """SReT-T without slicing, distilled, fine-tuned at 384 (48x48 positional grid)."""
    return _create_sret("SReT_T_wo_slice_distill_finetune384", pretrained, **kwargs)


@register_model
def SReT_S_wo_slice_finetune_384(pretrained: bool = False, **kwargs) -> SReT:  # noqa: N802
    """SReT-S without slicing, distilled, fine-tuned at 384 (the reference factory's name)."""
    return _create_sret("SReT_S_wo_slice_finetune_384", pretrained, **kwargs)


@register_model
def SReT_S_wo_slice_distill_finetune512(pretrained: bool = False, **kwargs) -> SReT:  # noqa: N802
    """SReT-S without slicing, distilled, fine-tuned at 512 (64x64 positional grid)."""
    return _create_sret("SReT_S_wo_slice_distill_finetune512", pretrained, **kwargs)
