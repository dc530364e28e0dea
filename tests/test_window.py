"""Window helpers: partition order, shift masks, overlapping windows, relative-position indices, padding."""
import pytest
import torch
import torch.nn.functional as F

from conftest import case_checkpoint, parity_case
from pixelforge.layers.window import (gather_relative_position_bias, merge_heads, overlap_relative_position_index,
                                      overlapping_windows, pad_to_multiple, relative_coordinates,
                                      relative_position_index, shift_window_mask, split_heads, window_layout,
                                      window_partition, window_reverse)


@pytest.mark.parametrize("window", [4, (2, 8), (8, 2)])
def test_partition_order_and_roundtrip(window):
    x = torch.randn(2, 16, 24, 5)
    wins = window_partition(x, window)
    wh, ww = (window, window) if isinstance(window, int) else window
    assert wins.shape == (2, (16 // wh) * (24 // ww), wh * ww, 5)
    # window k = (row k // nWw, column k % nWw), tokens row-major inside it
    n_ww = 24 // ww
    for k in (0, 1, n_ww, wins.shape[1] - 1):
        r, c = divmod(k, n_ww)
        ref = x[:, r * wh:(r + 1) * wh, c * ww:(c + 1) * ww].reshape(2, wh * ww, 5)
        torch.testing.assert_close(wins[:, k], ref, rtol=0, atol=0)
    torch.testing.assert_close(window_reverse(wins, window, 16, 24), x, rtol=0, atol=0)


def test_partition_rejects_non_multiple():
    with pytest.raises(ValueError, match="not a multiple of the window 8x8"):
        window_partition(torch.randn(1, 12, 16, 3), 8)


def test_split_merge_heads():
    x = torch.randn(2, 3, 16, 12)
    h = split_heads(x, 4)
    assert h.shape == (2, 3, 4, 16, 3)
    torch.testing.assert_close(h[:, :, 1], x[..., 3:6], rtol=0, atol=0)  # head-major channel split
    torch.testing.assert_close(merge_heads(h), x, rtol=0, atol=0)


def _swin_mask_reference(h, w, wh, ww, sh, sw, value):
    """Swin's slice-based construction, written out independently."""
    img = torch.zeros(1, h, w, 1)
    cnt = 0
    for hs in (slice(0, -wh), slice(-wh, -sh), slice(-sh, None)):
        for ws in (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)):
            img[:, hs, ws, :] = cnt
            cnt += 1
    win = window_partition(img, (wh, ww)).squeeze(-1)[0]
    diff = win.unsqueeze(1) - win.unsqueeze(2)
    return diff.masked_fill(diff != 0, value).masked_fill(diff == 0, 0.0)


@pytest.mark.parametrize("h,w,window,shift", [(24, 32, 8, 4), (16, 16, 16, 8), (16, 48, (4, 16), (2, 8))])
def test_shift_mask_matches_swin_construction(h, w, window, shift):
    wh, ww = (window, window) if isinstance(window, int) else window
    sh, sw = (shift, shift) if isinstance(shift, int) else shift
    mask = shift_window_mask(h, w, window, shift, -100.0)
    torch.testing.assert_close(mask, _swin_mask_reference(h, w, wh, ww, sh, sw, -100.0), rtol=0, atol=0)
    assert mask.shape == ((h // wh) * (w // ww), wh * ww, wh * ww)


def test_shift_mask_value_and_dtype():
    mask = shift_window_mask(16, 16, 8, 4, dtype=torch.bfloat16)
    assert mask.dtype == torch.bfloat16
    assert torch.isinf(mask).any() and set(mask[torch.isfinite(mask)].tolist()) == {0.0}
    assert (mask[0] == 0).all()  # the top-left window lies in one region
    assert (mask.diagonal(dim1=1, dim2=2) == 0).all()  # a token always sees itself


@pytest.mark.parametrize("h,w,window,shift", [(24, 32, 8, 4), (16, 48, (4, 16), (2, 8)), (16, 16, 8, 0)])
@pytest.mark.parametrize("masked", [True, False])
def test_window_layout_is_roll_partition_reorder(h, w, window, shift, masked):
    x = torch.randn(2, h, w, 3, 5)
    layout = window_layout(h, w, window, shift, -100.0 if masked else None)
    sh, sw = (shift, shift) if isinstance(shift, int) else shift
    ref = window_partition(torch.roll(x, (-sh, -sw), (1, 2)).flatten(3), window)
    full = shift_window_mask(h, w, window, shift, -100.0)
    first_token = layout.index.view(layout.num_windows, -1)[:, 0]
    order = [int(torch.nonzero(ref[0, :, 0, 0] == x.flatten(1, 2)[0, t, 0, 0])[0]) for t in first_token]
    assert sorted(order) == list(range(layout.num_windows))
    torch.testing.assert_close(layout.partition(x).flatten(3), ref[:, order], rtol=0, atol=0)
    torch.testing.assert_close(layout.reverse(layout.partition(x), h, w), x, rtol=0, atol=0)
    if not masked or not (sh or sw):
        assert layout.mask is None and layout.num_unmasked == layout.num_windows and order == sorted(order)
    else:  # windows needing the mask come last, with their mask; the others' mask is all zero
        k = layout.num_unmasked
        assert 0 < k < layout.num_windows and (full[order[:k]] == 0).all()
        torch.testing.assert_close(layout.mask, full[order[k:]], rtol=0, atol=0)


@pytest.mark.parametrize("m,e", [(8, 12), (4, 8), (16, 24)])
def test_overlapping_windows_equal_unfold(m, e):
    x = torch.randn(2, 16, 32, 6)
    ours = overlapping_windows(x, m, e)
    ref = F.unfold(x.permute(0, 3, 1, 2), kernel_size=e, stride=m, padding=(e - m) // 2)  # (B, C·E², nW)
    ref = ref.view(2, 6, e * e, -1).permute(0, 3, 2, 1)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    # the first window's top-left corner is zero padding
    assert (ours[:, 0, 0] == 0).all()


def test_overlapping_windows_reject_odd_overlap():
    with pytest.raises(ValueError, match="even"):
        overlapping_windows(torch.randn(1, 8, 8, 2), 8, 11)


@pytest.mark.parametrize("window", [3, (2, 5)])
def test_relative_position_index(window):
    wh, ww = (window, window) if isinstance(window, int) else window
    idx = relative_position_index(window)
    coords = [(y, x) for y in range(wh) for x in range(ww)]
    table = relative_coordinates(window)
    for i, (yi, xi) in enumerate(coords):
        for j, (yj, xj) in enumerate(coords):
            assert table[idx[i, j]].tolist() == [yi - yj, xi - xj]
    assert idx.min() == 0 and idx.max() == (2 * wh - 1) * (2 * ww - 1) - 1


def test_overlap_index_matches_official_buffer_modulo_table():
    case, _, folder = parity_case("hat_small")
    state = torch.load(case_checkpoint(case, folder), weights_only=True)["params_ema"]
    official = state["relative_position_index_OCA"]
    m = case["official"]["kwargs"]["window_size"]
    e = m + int(m * case["official"]["kwargs"]["overlap_ratio"])
    ours = overlap_relative_position_index(m, e)
    assert (official < 0).any()  # the official layout wraps around the table
    torch.testing.assert_close(ours, official % (m + e - 1) ** 2, rtol=0, atol=0)
    torch.testing.assert_close(relative_position_index(m), state["relative_position_index_SA"], rtol=0, atol=0)


def test_overlap_index_is_a_bijection_of_displacements():
    m, e = 16, 24
    idx = overlap_relative_position_index(m, e)
    assert idx.shape == (m * m, e * e) and idx.min() >= 0 and idx.max() < (m + e - 1) ** 2
    assert idx.unique().numel() == (m + e - 1) ** 2


def test_gather_bias():
    table = torch.randn(25, 3)
    idx = relative_position_index(3)
    bias = gather_relative_position_bias(table, idx)
    assert bias.shape == (3, 9, 9)
    torch.testing.assert_close(bias[2, 4, 7], table[idx[4, 7], 2])


def test_pad_reflect_matches_torch_and_extends():
    x = torch.randn(1, 3, 21, 30)
    torch.testing.assert_close(pad_to_multiple(x, 8), F.pad(x, (0, 2, 0, 3), mode="reflect"), rtol=0, atol=0)
    exact = torch.randn(1, 3, 24, 32)
    assert pad_to_multiple(exact, 8) is exact  # only where needed
    small = torch.arange(5.0).view(1, 1, 1, 5)
    assert pad_to_multiple(small, (1, 16))[0, 0, 0].tolist() == [0, 1, 2, 3, 4, 3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1]


def test_pad_symmetric_always():
    x = torch.randn(1, 3, 32, 43)
    padded = pad_to_multiple(x, 16, mode="symmetric", always=True)
    assert padded.shape[-2:] == (48, 48)  # 32 is a multiple of 16 and still gets 16 rows
    ref = torch.cat([x, x.flip(2)], 2)[:, :, :48]
    ref = torch.cat([ref, ref.flip(3)], 3)[..., :48]
    torch.testing.assert_close(padded, ref, rtol=0, atol=0)
