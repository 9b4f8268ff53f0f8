"""DiffSeg's pure steps: known answers, and agreement with a line-by-line NumPy port of the
published implementation (google/diffseg segmentor.py) on identical inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from diffuseg.ops.attention import aggregate_self_attention, resolution_weights
from diffuseg.ops.clustering import (
    _greedy_groups,
    _unique_rows,
    anchor_distances,
    anchor_grid,
    greedy_merge,
    kmeans_refine,
    merge_attention,
    symmetric_kl,
)
from diffuseg.ops.masks import maps_to_labels


# ---------------------------------------------------------------- reference port (NumPy, float64)
def ref_aggregate(maps: dict[int, np.ndarray], R: int) -> np.ndarray:
    """segmentor.py::aggregate_weights: key axes bilinear-upsampled + renormalised, query axes
    tiled, weights sqrt(tokens)/sum."""
    ratio = {s: s / sum(maps) for s in maps}
    aggre = np.zeros((R, R, R, R))
    for s, w in maps.items():
        w = torch.from_numpy(w.reshape(s * s, 1, s, s))
        w = F.interpolate(w, size=(R, R), mode="bilinear", align_corners=False).numpy()  # Keras half-pixel
        w = w.reshape(s, s, R, R)
        w = w / w.sum((2, 3), keepdims=True)
        w = np.repeat(np.repeat(w, R // s, axis=0), R // s, axis=1)
        aggre += w * ratio[s]
    return aggre


def ref_kl(x, Y):
    q = np.log(x) - np.log(Y)
    return np.sum(x * q, axis=(-1, -2)) / 2 - np.sum(Y * q, axis=(-1, -2)) / 2


def ref_generate_masks(attn: np.ndarray, thresholds, num_points) -> np.ndarray:
    R = attn.shape[0]
    seg_len = (R - 1) // (num_points - 1)
    start = (R - 1 - seg_len * (num_points - 1)) // 2
    pts = start + seg_len * np.arange(num_points)
    grid = [(i, j) for i in pts for j in pts]
    anchors = np.stack([attn[i, j] for i, j in grid])  # (A, R, R)
    flat = attn.reshape(R * R, R, R)
    kl = np.stack([ref_kl(a[None], flat) for a in anchors])  # (A, N), float64 (the fix)
    kl_bin = (kl < thresholds[0]).astype(np.float64)
    new = (kl_bin @ flat.reshape(R * R, -1)) / kl_bin.sum(1, keepdims=True)
    attns = new.reshape(-1, R, R)
    for tau in thresholds[1:]:
        matched, merged = set(), []
        for i, p in enumerate(attns):
            if i in matched:
                continue
            group = np.where(ref_kl(p[None], attns) < tau)[0]
            matched |= set(group.tolist())
            merged.append(attns[group].mean(0))
        attns = np.stack(merged)
    return attns


def _random_maps(rng, sizes, sharp=6.0):
    out = {}
    for s in sizes:
        logits = rng.normal(size=(s * s, s * s)) * sharp / s
        p = np.exp(logits - logits.max(1, keepdims=True))
        out[s] = p / p.sum(1, keepdims=True)
    return out


# ---------------------------------------------------------------- aggregation
def test_resolution_weights_proportional_to_side():
    w = resolution_weights([(64, 64), (32, 32), (16, 16), (8, 8)])
    np.testing.assert_allclose(w, [8 / 15, 4 / 15, 2 / 15, 1 / 15])


def test_aggregate_matches_reference_port():
    rng = np.random.default_rng(0)
    maps = _random_maps(rng, [16, 8, 4, 2])
    ours = aggregate_self_attention({s: torch.from_numpy(m).float() for s, m in maps.items()})
    ref = ref_aggregate(maps, 16).reshape(256, 16, 16)
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-6)
    np.testing.assert_allclose(ours.sum((1, 2)).numpy(), 1.0, atol=1e-5)


def test_aggregate_uniform_maps_stay_uniform():
    maps = {s: torch.full((s * s, s * s), 1.0 / (s * s)) for s in (8, 4)}
    out = aggregate_self_attention(maps)
    torch.testing.assert_close(out, torch.full((64, 8, 8), 1 / 64))


def test_aggregate_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        aggregate_self_attention({})
    with pytest.raises(ValueError, match="shape"):
        aggregate_self_attention({8: torch.rand(64, 32)})


# ---------------------------------------------------------------- KL and merging
def test_symmetric_kl_known_values():
    p = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    d = symmetric_kl(p, p)
    assert torch.allclose(torch.diag(d), torch.zeros(2), atol=1e-7)
    kl_pq = 0.5 * np.log(0.5 / 0.9) + 0.5 * np.log(0.5 / 0.1)
    kl_qp = 0.9 * np.log(0.9 / 0.5) + 0.1 * np.log(0.1 / 0.5)
    expected = 0.5 * (kl_pq + kl_qp)
    assert d[0, 1].item() == pytest.approx(expected, rel=1e-5)
    assert torch.allclose(d, d.T)


def test_anchor_grid_matches_reference():
    assert anchor_grid(64, 16).tolist() == list(range(1, 62, 4))
    assert anchor_grid(16, 1).tolist() == [7]
    with pytest.raises(ValueError, match="anchors"):
        anchor_grid(16, 0)
    with pytest.raises(ValueError, match="anchors"):
        anchor_grid(8, 9)


def test_merge_matches_reference_port():
    rng = np.random.default_rng(1)
    maps = _random_maps(rng, [16, 8, 4, 2], sharp=30.0)
    agg = ref_aggregate(maps, 16)
    for thresholds in [(1.1, 1.1, 1.1), (0.5, 0.9), (2.0, 1.5, 1.0), (1.1,), (0.3,)]:
        ref = ref_generate_masks(agg, thresholds, 8)
        ours = merge_attention(torch.from_numpy(agg.reshape(256, 16, 16)), anchors=8, thresholds=thresholds)
        assert ours.shape == ref.shape
        np.testing.assert_allclose(ours.numpy(), ref, atol=1e-5)


def test_merge_averages_each_distinct_anchor_group_once_with_its_multiplicity():
    """Anchors with equal iteration-0 groups are averaged once and weighted by their count; the
    result is the reference's, duplicates included when there is no later iteration."""
    noise = ref_aggregate(_random_maps(np.random.default_rng(3), [16, 8, 4, 2], sharp=30.0), 16)
    flat = 0.9 * _quadrant_attention()[0].double() + 0.1 * torch.from_numpy(noise.reshape(256, 16, 16))
    agg = flat.numpy().reshape(16, 16, 16, 16)
    members = anchor_distances(flat, 8) < 0.2
    distinct = torch.unique(members, dim=0)
    assert 1 < len(distinct) < len(members)  # the case under test: repeated groups
    for thresholds in [(0.2, 0.1), (0.2, 0.5, 0.5), (0.2, 1.1)]:
        ours = merge_attention(flat, anchors=8, thresholds=thresholds)
        np.testing.assert_allclose(ours.numpy(), ref_generate_masks(agg, thresholds, 8), atol=1e-5)
    single = merge_attention(flat, anchors=8, thresholds=(0.2,))
    assert single.shape[0] == 64 and len(torch.unique(single.flatten(1), dim=0)) == len(distinct)
    np.testing.assert_allclose(single.numpy(), ref_generate_masks(agg, (0.2,), 8), atol=1e-5)


def test_merge_with_precomputed_anchor_distances_is_identical():
    rng = np.random.default_rng(2)
    agg = torch.from_numpy(ref_aggregate(_random_maps(rng, [16, 8, 4, 2], sharp=30.0), 16).reshape(256, 16, 16))
    kl = anchor_distances(agg, 8)
    assert kl.shape == (64, 256) and torch.all(kl >= 0)
    for thresholds in [(1.1, 1.1, 1.1), (0.5, 0.9)]:
        fresh = merge_attention(agg, anchors=8, thresholds=thresholds)
        assert torch.equal(merge_attention(agg, anchors=8, thresholds=thresholds, anchor_kl=kl), fresh)
    with pytest.raises(ValueError, match="anchor_kl"):
        merge_attention(agg, anchors=4, thresholds=(1.0,), anchor_kl=kl)


def test_diffseg_keeps_threshold_free_work_with_the_features(monkeypatch):
    """Re-segmenting cached features with other thresholds reuses the aggregated maps and the
    anchors' distances (`Features.derive`), shared by the row views of one pass."""
    import diffuseg.methods.diffseg as diffseg
    from diffuseg.backbone.features import Features

    agg, _ = _quadrant_attention()
    n = agg.shape[0]
    features = Features(
        self_attention={"attn1@16x16": agg.reshape(1, n, n)},
        layer_sizes={"attn1@16x16": (16, 16)},
        images=torch.zeros(1, 3, 32, 32),
        prompts=[""],
    )
    calls = []
    real = diffseg.aggregate_self_attention
    monkeypatch.setattr(diffseg, "aggregate_self_attention", lambda maps: calls.append(1) or real(maps))
    first = diffseg.segment(features.rows(0, 1), diffseg.DiffSegConfig(num_anchors_per_side=4))
    again = diffseg.segment(features.rows(0, 1), diffseg.DiffSegConfig(num_anchors_per_side=4, kl_thresholds=(2.0,)))
    assert len(calls) == 1 and first.num_segments == 4 and again.num_segments >= 1
    assert ("diffseg", "anchor_kl", 4) in features.derived[("rows", 0, 1)]


def _quadrant_attention(R=16):
    """Each query attends uniformly within its own quadrant: the answer is 4 segments."""
    q = (torch.arange(R) >= R // 2).long()
    quad = (q[:, None] * 2 + q[None, :]).reshape(-1)  # (R*R,)
    same = (quad[:, None] == quad[None, :]).float() + 1e-3
    maps = same / same.sum(1, keepdim=True)
    return maps.reshape(R * R, R, R), quad.reshape(R, R)


def test_four_quadrants_give_four_segments():
    agg, quad = _quadrant_attention()
    proposals = merge_attention(agg, anchors=4, thresholds=(1.1, 1.1, 1.1))
    assert proposals.shape[0] == 4
    labels = maps_to_labels(proposals, (32, 32))
    up = quad.repeat_interleave(2, 0).repeat_interleave(2, 1)
    # one label per quadrant, and the labelling is a bijection with the quadrants
    pairs = set(zip(labels.flatten().tolist(), up.flatten().tolist(), strict=False))
    assert len(pairs) == 4 and len(torch.unique(labels)) == 4


def test_merge_thresholds_validated():
    agg, _ = _quadrant_attention(8)
    for bad in [(), (0.0,), (1.1, -1.0)]:
        with pytest.raises(ValueError, match="thresholds"):
            merge_attention(agg, thresholds=bad)
    with pytest.raises(ValueError, match="anchors"):
        merge_attention(agg, anchors=0)


def test_merge_float16_input_gives_finite_result():
    agg, _ = _quadrant_attention(8)
    agg = agg.clone()
    agg[0] = 0
    agg[0, 0, 0] = 1.0  # zeros everywhere else: float16 logs would be -inf
    out = merge_attention(agg.half(), anchors=4)
    assert torch.isfinite(out).all()


def test_kmeans_refine_keeps_separated_clusters():
    agg, quad = _quadrant_attention(8)
    proposals = merge_attention(agg, anchors=4)
    refined = kmeans_refine(proposals, agg)
    assert refined.shape == proposals.shape
    torch.testing.assert_close(refined, proposals, atol=1e-5, rtol=1e-4)


def test_maps_to_labels_argmax_and_relabel():
    maps = torch.zeros(3, 2, 2)
    maps[2, 0, :] = 1  # top row -> proposal 2
    maps[0, 1, :] = 1  # bottom row -> proposal 0; proposal 1 never wins
    labels = maps_to_labels(maps, (2, 2))
    assert labels.tolist() == [[1, 1], [0, 0]]


def test_aggregate_non_integer_factor_tiles_like_nearest_interpolation():
    g = torch.Generator().manual_seed(0)
    maps = {
        (12, 12): torch.rand(144, 144, generator=g).softmax(-1),
        (5, 5): torch.rand(25, 25, generator=g).softmax(-1),
    }
    out = aggregate_self_attention(maps)
    small = maps[(5, 5)].reshape(25, 1, 5, 5)
    keys = F.interpolate(small, size=(12, 12), mode="bilinear", align_corners=False).reshape(25, 144)
    keys = keys / keys.sum(1, keepdim=True)
    tiled = F.interpolate(keys.T.reshape(1, 144, 5, 5), size=(12, 12), mode="nearest").reshape(144, 144).T
    w = resolution_weights([(12, 12), (5, 5)])
    expected = w[0] * maps[(12, 12)] / maps[(12, 12)].sum(1, keepdim=True) + w[1] * tiled
    torch.testing.assert_close(out.reshape(144, 144), expected, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- no host round trip
#: Tensor methods that copy data to the host or read a value into Python (each a device sync).
_HOST_READS = {"cpu", "numpy", "item", "tolist", "__bool__", "__int__", "__float__", "__index__", "__array__"}


class _NoHostReads(TorchFunctionMode):
    """Fails on any tensor call that brings data to the host (`_HOST_READS`, or `.to` a CPU
    device). `torch.equal` (one flag) and the sizes of data-dependent shapes stay allowed."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        to_cpu = name == "to" and any(
            isinstance(a, (str, torch.device)) and torch.device(a).type == "cpu" for a in (*args[1:], *kwargs.values())
        )
        if name in _HOST_READS or to_cpu:
            raise AssertionError(f"host read inside the merge: Tensor.{name}")
        return func(*args, **kwargs)


def test_host_read_guard_catches_copies():
    with _NoHostReads(), pytest.raises(AssertionError, match="Tensor.cpu"):
        torch.ones(2).cpu()
    with _NoHostReads(), pytest.raises(AssertionError, match="__bool__"):
        bool(torch.ones(1))


def test_diffseg_merge_stays_on_the_features_device():
    """Aggregation, KL merge (both iteration kinds) and labels read nothing back to the host:
    on a GPU they run where the recorded maps are. Results equal those outside the guard."""
    maps = {s: torch.from_numpy(m).float() for s, m in _random_maps(np.random.default_rng(5), [16, 8, 4, 2]).items()}
    expected = maps_to_labels(merge_attention(aggregate_self_attention(maps), 8), (32, 32))
    with _NoHostReads():
        agg = aggregate_self_attention(maps)
        kl = anchor_distances(agg, 8)
        for thresholds in [(1.1, 1.1, 1.1), (0.5,), (0.3, 0.6)]:
            proposals = merge_attention(agg, 8, thresholds, anchor_kl=kl)
        labels = maps_to_labels(merge_attention(agg, 8, anchor_kl=kl), (32, 32))
        greedy_merge(proposals.flatten(1), 0.5)
    assert torch.equal(labels, expected)


def _loop_greedy_groups(close: torch.Tensor) -> torch.Tensor:
    """The reference's loop: each row not yet matched leads and marks its close columns."""
    matched, groups = torch.zeros(close.shape[1], dtype=torch.bool), []
    for i, row in enumerate(close):
        if not matched[i]:
            matched |= row
            groups.append(i)
    return close[groups]


def test_greedy_groups_and_unique_rows_match_plain_loops():
    g = torch.Generator().manual_seed(0)
    for trial in range(60):
        k = int(torch.randint(1, 40, (1,), generator=g))
        close = torch.rand(k, k, generator=g) < 0.3 * trial / 60
        close = (close | close.T) if trial % 2 else close  # symmetric and not
        close.fill_diagonal_(True)
        assert torch.equal(_greedy_groups(close), _loop_greedy_groups(close))
        rows = (torch.rand(5, 12, generator=g) < 0.5)[torch.randint(0, 5, (k,), generator=g)]
        distinct, inverse = _unique_rows(rows)
        order = list(dict.fromkeys(tuple(r) for r in rows.tolist()))  # first occurrences, in order
        assert distinct.tolist() == [list(r) for r in order]
        assert torch.equal(distinct[inverse], rows)
