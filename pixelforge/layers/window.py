"""Window helpers shared by the windowed-attention models (HAT, CRAFT, Swin-like blocks).

Layout conventions:
- Feature maps are channels-last ``(B, H, W, C)``.
- Windows come out as ``(B, nW, N, C)``: ``nW`` windows in row-major order over the window grid, ``N = wh·ww``
  tokens per window in row-major order inside the window. This is the ``(B, W, ..., N, ...)`` layout of
  :func:`pixelforge.kernels.attention` once the heads are split off.
- A window size is an ``int`` (square) or a ``(height, width)`` pair (rectangular).
- Relative-position indices are int64 ``(Nq, Nk)`` tensors into a bias table of shape ``(T, heads)``;
  :func:`gather_relative_position_bias` turns table + index into the ``(heads, Nq, Nk)`` bias the attention op takes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "to_2tuple", "window_partition", "window_reverse", "split_heads", "merge_heads", "shift_window_mask",
    "overlapping_windows", "relative_position_index", "overlap_relative_position_index", "relative_coordinates",
    "gather_relative_position_bias", "pad_to_multiple", "WindowLayout", "window_layout",
]

Size2 = int | tuple[int, int]


def to_2tuple(size: Size2) -> tuple[int, int]:
    """``8`` → ``(8, 8)``; ``(4, 16)`` → ``(4, 16)``."""
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def window_partition(x: torch.Tensor, window_size: Size2) -> torch.Tensor:
    """Cut a channels-last map into non-overlapping windows.

    Args:
        x: (B, H, W, C) with H and W multiples of the window height and width.
        window_size: ``M`` or ``(wh, ww)``.
    Returns:
        (B, nW, wh·ww, C) with nW = (H/wh)·(W/ww), windows row-major, tokens row-major inside a window.
    """
    b, h, w, c = x.shape
    wh, ww = to_2tuple(window_size)
    if h % wh or w % ww:
        raise ValueError(f"feature map {h}x{w} is not a multiple of the window {wh}x{ww}")
    x = x.view(b, h // wh, wh, w // ww, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // wh) * (w // ww), wh * ww, c)


def window_reverse(windows: torch.Tensor, window_size: Size2, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B, nW, wh·ww, C) → (B, H, W, C)."""
    b, _, _, c = windows.shape
    wh, ww = to_2tuple(window_size)
    x = windows.view(b, h // wh, w // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, nW, N, C) → (B, nW, heads, N, C/heads), channels split head-major (a view, no copy)."""
    b, nw, n, c = x.shape
    return x.view(b, nw, n, num_heads, c // num_heads).transpose(2, 3)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, nW, heads, N, d) → (B, nW, N, heads·d), the inverse of :func:`split_heads`."""
    b, nw, nh, n, d = x.shape
    return x.transpose(2, 3).reshape(b, nw, n, nh * d)


def shift_window_mask(h: int, w: int, window_size: Size2, shift_size: Size2, mask_value: float = float("-inf"),
                      *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
                      ) -> torch.Tensor:
    """Additive attention mask of shifted windows (Swin's construction) for a map cyclically shifted by −shift.

    The map is labelled in 3×3 regions (rows [0, H−wh), [H−wh, H−sh), [H−sh, H) and likewise for columns); after
    the cyclic shift a window may hold tokens of several regions, and a query may only attend to keys of its own
    region. Allowed pairs get 0, the others ``mask_value`` (HAT/SwinIR use −100; −inf masks exactly).

    Args:
        h, w: size of the (padded) map. window_size, shift_size: ``M`` or ``(wh, ww)``; shift ``(sh, sw)``.
        mask_value: value of the forbidden pairs. dtype, device: of the result (build it in the compute dtype).
    Returns:
        (nW, N, N) with N = wh·ww, windows in :func:`window_partition` order.
    """
    wh, ww = to_2tuple(window_size)
    sh, sw = to_2tuple(shift_size)
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    row_label = (rows >= h - wh).long() + (rows >= h - sh).long()
    col_label = (cols >= w - ww).long() + (cols >= w - sw).long()
    labels = (row_label[:, None] * 3 + col_label[None, :]).view(1, h, w, 1)
    labels = window_partition(labels, (wh, ww))[0, :, :, 0]  # (nW, N)
    same = labels[:, :, None] == labels[:, None, :]
    zero = torch.zeros((), dtype=dtype, device=device)
    return torch.where(same, zero, torch.tensor(mask_value, dtype=dtype, device=device))


@dataclass
class WindowLayout:
    """A (shifted) window partition as one gather, with the windows that need the shift mask placed last.

    ``partition`` = cyclic shift by −shift + :func:`window_partition` + window reordering, in a single
    ``index_select``; ``reverse`` undoes all three. Windows ``[0, num_unmasked)`` lie in one shift region (their
    mask would be all zeros); ``mask`` holds the mask of the others, so attention can skip it where it is zero.

    Attributes:
        index: (nW·N,) int64 flat source position (row-major over H×W) of every windowed token.
        inverse: (H·W,) int64, the inverse permutation.
        num_windows, window_tokens: nW and N = wh·ww.
        num_unmasked: number of leading windows that need no mask.
        mask: (nW − num_unmasked, N, N) additive mask of the trailing windows, or None (no mask requested, or no
            window needs one).
    """

    index: torch.Tensor
    inverse: torch.Tensor
    num_windows: int
    window_tokens: int
    num_unmasked: int
    mask: torch.Tensor | None

    def partition(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, *F) → (B, nW, N, *F) (one copy)."""
        b, h, w = x.shape[:3]
        win = x.reshape(b, h * w, *x.shape[3:]).index_select(1, self.index)
        return win.view(b, self.num_windows, self.window_tokens, *x.shape[3:])

    def reverse(self, windows: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(B, nW, N, *F) → (B, H, W, *F) (one copy)."""
        b = windows.shape[0]
        flat = windows.reshape(b, self.num_windows * self.window_tokens, *windows.shape[3:])
        return flat.index_select(1, self.inverse).view(b, h, w, *windows.shape[3:])


def window_layout(h: int, w: int, window_size: Size2, shift_size: Size2 = 0, mask_value: float | None = None, *,
                  dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> WindowLayout:
    """The :class:`WindowLayout` of an H×W map cut into wh×ww windows after a cyclic shift by −(sh, sw).

    Args:
        h, w: map size (multiples of the window). window_size, shift_size: ``M`` or ``(wh, ww)``; ``(sh, sw)``.
        mask_value: build the shift mask (see :func:`shift_window_mask`) with this value and put the windows that
            need it last; None for unmasked shifted windows (then the window order is row-major).
        dtype, device: of the mask (and device of the indices).
    """
    wh, ww = to_2tuple(window_size)
    sh, sw = to_2tuple(shift_size)
    rows = (torch.arange(h, device=device) + sh) % h
    cols = (torch.arange(w, device=device) + sw) % w
    src = (rows[:, None] * w + cols[None, :]).view(1, h, w, 1)
    index = window_partition(src, (wh, ww))[0, :, :, 0]  # (nW, N)
    nw, n = index.shape
    mask, num_unmasked = None, nw
    if mask_value is not None and (sh or sw):
        full = shift_window_mask(h, w, (wh, ww), (sh, sw), mask_value, dtype=dtype, device=device)
        needs = (full != 0).flatten(1).any(1)
        order = torch.cat([torch.nonzero(~needs).flatten(), torch.nonzero(needs).flatten()])
        num_unmasked = int((~needs).sum())
        index = index[order]
        mask = full[order[num_unmasked:]] if num_unmasked < nw else None
    index = index.reshape(-1)
    inverse = torch.empty_like(index).scatter_(0, index, torch.arange(index.numel(), device=index.device))
    return WindowLayout(index, inverse, nw, n, num_unmasked, mask)


def overlapping_windows(x: torch.Tensor, window_size: int, overlap_window: int) -> torch.Tensor:
    """Overlapping E×E windows centred on the M×M windows of :func:`window_partition` (HAT's OCAB keys/values).

    Equivalent to ``nn.Unfold(kernel E, stride M, padding (E−M)/2)``: the map is **zero-padded** by (E−M)/2 on every
    side, so border windows contain exact zeros (HAT attends to them unmasked).

    Args:
        x: (B, H, W, C), H and W multiples of M.
        window_size: M (query window). overlap_window: E ≥ M with E − M even.
    Returns:
        (B, nW, E·E, C), windows row-major (same order as :func:`window_partition` with M), tokens row-major.
    """
    m, e = window_size, overlap_window
    if e < m or (e - m) % 2:
        raise ValueError(f"overlapping window {e} must be at least the window {m} and differ from it by an even "
                         f"number (overlap_ratio·window_size must be even)")
    b, h, w, c = x.shape
    if h % m or w % m:
        raise ValueError(f"feature map {h}x{w} is not a multiple of the window {m}")
    p = (e - m) // 2
    x = F.pad(x, (0, 0, p, p, p, p))
    x = x.unfold(1, e, m).unfold(2, e, m)  # (B, nWh, nWw, C, E, E), a view
    return x.permute(0, 1, 2, 4, 5, 3).reshape(b, (h // m) * (w // m), e * e, c)


def relative_coordinates(window_size: Size2) -> torch.Tensor:
    """Every relative offset (Δy, Δx) of a wh×ww window as float rows, Δy-major.

    Returns:
        ((2wh−1)·(2ww−1), 2) float32, Δy from −(wh−1) to wh−1 and Δx from −(ww−1) to ww−1 (CRAFT's ``biases_h/v``,
        the input of a dynamic position-bias MLP indexed by :func:`relative_position_index`).
    """
    wh, ww = to_2tuple(window_size)
    dy, dx = torch.meshgrid(torch.arange(1 - wh, wh), torch.arange(1 - ww, ww), indexing="ij")
    return torch.stack([dy.flatten(), dx.flatten()], dim=1).float()


def relative_position_index(window_size: Size2) -> torch.Tensor:
    """Index of the relative offset of every (query, key) pair inside a wh×ww window.

    index[i, j] = (yᵢ − yⱼ + wh − 1)·(2ww − 1) + (xᵢ − xⱼ + ww − 1), in [0, (2wh−1)(2ww−1)).

    Returns:
        (N, N) int64, N = wh·ww (rows: queries, columns: keys, both row-major in the window).
    """
    wh, ww = to_2tuple(window_size)
    ys, xs = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + wh - 1
    dx = xs[:, None] - xs[None, :] + ww - 1
    return dy * (2 * ww - 1) + dx


def overlap_relative_position_index(window_size: int, overlap_window: int) -> torch.Tensor:
    """HAT's OCA index between M×M query windows and E×E key windows, in HAT's (wrapped) table layout.

    HAT computes (yₑ − y_q + M − E + 1)·(M + E − 1) + (xₑ − x_q + M − E + 1), which is negative for most pairs, and
    reads its table with Python indexing, so a negative entry −n means row T − n (T = (M + E − 1)²). This returns
    that formula modulo T, i.e. the official buffer made non-negative: the same table rows are read, so official
    tables load unchanged and gather-style lookups (which do not wrap) are safe.

    Returns:
        (M², E²) int64 in [0, (M + E − 1)²).
    """
    m, e = window_size, overlap_window
    span = m + e - 1
    yq, xq = (t.flatten() for t in torch.meshgrid(torch.arange(m), torch.arange(m), indexing="ij"))
    ye, xe = (t.flatten() for t in torch.meshgrid(torch.arange(e), torch.arange(e), indexing="ij"))
    dy = ye[None, :] - yq[:, None] + m - e + 1
    dx = xe[None, :] - xq[:, None] + m - e + 1
    return torch.remainder(dy * span + dx, span * span)


def gather_relative_position_bias(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Look up a relative-position bias: table (T, heads), index (Nq, Nk) in [0, T) → (heads, Nq, Nk), contiguous
    (SDPA copies a strided mask on every call)."""
    return table.t().index_select(1, index.reshape(-1)).view(-1, *index.shape)


def pad_to_multiple(x: torch.Tensor, multiple: Size2, mode: str = "reflect", always: bool = False) -> torch.Tensor:
    """Pad (…, H, W) at the bottom and right to a multiple of ``multiple`` (official SR inference padding).

    Args:
        x: (…, H, W).
        multiple: ``m`` or ``(mh, mw)``.
        mode: ``"reflect"`` — mirror without repeating the edge (torch ``reflect``; HAT); ``"symmetric"`` — mirror
            repeating the edge, i.e. appending the flipped image (CRAFT's inference script); ``"replicate"``,
            ``"constant"`` (zeros) as in torch.
        always: pad to the *next* multiple even when the size already is one (1…m rows; CRAFT's script) instead of
            only where needed (0…m−1 rows).
    Mirror pads larger than the image continue the mirrored (periodic) extension instead of failing; a 1-pixel
    side falls back to repeating the pixel.
    Returns:
        (…, H', W') with H' and W' multiples (H'/W' ≥ H/W); the original occupies [:H, :W].
    """
    mh, mw = to_2tuple(multiple)
    h, w = x.shape[-2:]
    ph = (h // mh + 1) * mh - h if always else (-h) % mh
    pw = (w // mw + 1) * mw - w if always else (-w) % mw
    if ph == 0 and pw == 0:
        return x
    if mode in ("replicate", "constant"):
        return F.pad(x, (0, pw, 0, ph), mode=mode)
    if mode not in ("reflect", "symmetric"):
        raise ValueError(f"unknown padding mode '{mode}'")
    return _mirror_extend(_mirror_extend(x, ph, -2, mode), pw, -1, mode)


def _mirror_extend(x: torch.Tensor, pad: int, dim: int, mode: str) -> torch.Tensor:
    """Extend ``x`` by ``pad`` entries at the end of ``dim`` by (repeated) mirroring."""
    n = x.shape[dim]
    if pad == 0:
        return x
    if mode == "reflect" and n == 1:
        return torch.cat([x] + [x] * pad, dim=dim)
    # one period of the mirrored extension: the sequence followed by its mirror image
    if mode == "symmetric":
        mirror = x.flip(dim)
    else:  # reflect: the mirror image without the two end entries
        mirror = x.flip(dim).narrow(dim, 1, max(n - 2, 0))
    period = torch.cat([x, mirror], dim=dim)
    reps = math.ceil((n + pad) / period.shape[dim])
    ext = torch.cat([period] * reps, dim=dim) if reps > 1 else period
    return ext.narrow(dim, 0, n + pad)
