"""Known-answer tests for diffuseg.ops.kmeans (k-means, silhouette, the rule for K)."""

from __future__ import annotations

import math

import pytest
import torch

from diffuseg.ops import kmeans as km
from diffuseg.ops.kmeans import choose_k, kmeans, silhouette


def _blobs(k: int, per: int = 40, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g) * 10
    truth = torch.arange(k).repeat_interleave(per)
    x = centres[truth] + 0.5 * torch.randn(k * per, d, generator=g)
    return x, truth


def _same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """a and b are equal up to a renaming of labels (a bijection)."""
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("k", [3, 5])
def test_kmeans_recovers_separated_blobs(k):
    x, truth = _blobs(k)
    labels, centres = kmeans(x, k, _gen())
    assert labels.shape == (len(x),) and labels.dtype == torch.int64
    assert centres.shape == (k, 8) and centres.dtype == torch.float32
    assert _same_partition(labels, truth)
    for j in range(k):  # centres are the means of their clusters
        torch.testing.assert_close(centres[j], x[labels == j].mean(0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("k", [3, 5])
def test_choose_k_finds_true_k(k):
    x, _ = _blobs(k, seed=1)
    best, scores = choose_k(x, generator=_gen())
    assert best == k
    assert sorted(scores) == list(range(2, 9))
    assert max(scores.values()) == scores[k]


def test_choose_k_caps_at_n_minus_one_and_samples():
    x, _ = _blobs(2, per=3)  # N = 6
    best, scores = choose_k(x, k_max=10, generator=_gen())
    assert sorted(scores) == [2, 3, 4, 5] and best == 2
    x, _ = _blobs(3, per=100)
    best, scores = choose_k(x, k_max=4, generator=_gen(), sample=50)
    assert best == 3 and sorted(scores) == [2, 3, 4]


def test_seeded_generator_is_deterministic():
    x, _ = _blobs(4, per=30, seed=2)
    x = x + 3 * torch.randn(x.shape, generator=_gen(9))  # overlapping blobs: seeding matters
    a = kmeans(x, 6, _gen(5))
    b = kmeans(x, 6, _gen(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert choose_k(x, generator=_gen(5), sample=50) == choose_k(x, generator=_gen(5), sample=50)
    assert silhouette(x, a[0], sample=50, generator=_gen(1)) == silhouette(x, a[0], sample=50, generator=_gen(1))


def test_default_generator_and_single_cluster():
    x, _ = _blobs(3)
    labels, centres = kmeans(x, 3)
    assert len(labels.unique()) == 3
    labels, centres = kmeans(x, 1, _gen())
    assert labels.eq(0).all()
    torch.testing.assert_close(centres[0], x.mean(0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes(dtype):
    x, truth = _blobs(3)
    labels, centres = kmeans(x.to(dtype), 3, _gen())
    assert centres.dtype == torch.float32 and labels.dtype == torch.int64
    assert _same_partition(labels, truth)
    assert choose_k(x.to(dtype), k_max=5, generator=_gen())[0] == 3
    assert silhouette(x.to(dtype), truth, sample=None) == pytest.approx(silhouette(x, truth, sample=None), abs=1e-2)


def test_chunked_distances_match_unchunked(monkeypatch):
    x, truth = _blobs(3, per=50)
    full = kmeans(x, 3, _gen())
    s_full = silhouette(x, truth, sample=None)
    monkeypatch.setattr(km, "_BLOCK", 64)  # many small chunks
    chunked = kmeans(x, 3, _gen())
    assert torch.equal(full[0], chunked[0])
    torch.testing.assert_close(full[1], chunked[1])
    assert silhouette(x, truth, sample=None) == pytest.approx(s_full, abs=1e-6)


def test_silhouette_known_answer_with_singleton():
    # 1-D points 0, 1 | 10: s0 = (10 - 1) / 10, s1 = (9 - 1) / 9, singleton -> 0.
    x = torch.tensor([[0.0], [1.0], [10.0]])
    expected = (0.9 + 8 / 9 + 0.0) / 3
    assert silhouette(x, torch.tensor([0, 0, 7])) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("case", ["blobs", "random", "singletons"])
def test_silhouette_matches_sklearn(case):
    metrics = pytest.importorskip("sklearn.metrics")
    x, truth = _blobs(4, per=25, seed=3)
    if case == "blobs":
        labels = truth
    elif case == "random":
        labels = torch.randint(-2, 3, (len(x),), generator=_gen(4))
    else:
        labels = truth.clone()
        labels[:2] = torch.tensor([10, 11])  # two one-point clusters
    ours = silhouette(x, labels, sample=None)
    ref = metrics.silhouette_score(x.double().numpy(), labels.numpy())
    assert ours == pytest.approx(ref, abs=1e-5)


def test_silhouette_sample():
    x, truth = _blobs(3, per=100)
    full = silhouette(x, truth, sample=None)
    assert silhouette(x, truth, sample=300) == full  # N <= sample: all points
    part = silhouette(x, truth, sample=60, generator=_gen(1))
    assert part != full and part == pytest.approx(full, abs=0.05)


def test_empty_cluster_is_reseeded_at_the_farthest_point():
    x = torch.tensor([[0.0], [0.1], [0.2], [10.0], [10.1], [10.2]])
    # The centre at 1000 gets no point; it is re-seeded at 10.2, the point farthest from 5.
    labels, centres = km._lloyd(x, torch.tensor([[5.0], [1000.0]]), iterations=50, tol=0.0)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    torch.testing.assert_close(centres, torch.tensor([[0.1], [10.1]]))
    # The rule itself: filled in index order, never emptying another cluster.
    filled = km._fill_empty(torch.tensor([0, 0, 0, 2]), torch.tensor([1.0, 3.0, 2.0, 9.0]), 4)
    assert filled.tolist() == [0, 1, 3, 2]


def test_k_above_distinct_points_raises():
    base = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 5.0]])
    x = base.repeat(10, 1)
    labels, centres = kmeans(x, 3, _gen())
    assert _same_partition(labels, torch.arange(3).repeat(10))
    with pytest.raises(ValueError, match=r"`k`.*distinct.*\(3\).*k=4"):
        kmeans(x, 4, _gen())
    best, scores = choose_k(x, k_max=8, generator=_gen())
    assert sorted(scores) == [2, 3] and best == 3
    with pytest.raises(ValueError, match="distinct"):
        choose_k(torch.ones(5, 2), generator=_gen())


@pytest.mark.parametrize(
    "x, k, match",
    [
        (torch.zeros(5, 2), 0, r"`k`.*N=5.*k=0"),
        (torch.zeros(5, 2), 6, r"`k`.*N=5.*k=6"),
        (torch.zeros(5), 1, r"`x`.*2-D.*\(5,\)"),
        (torch.tensor([[0.0, 1.0], [math.nan, 0.0]]), 1, r"`x`.*finite"),
        (torch.tensor([[0.0, 1.0], [math.inf, 0.0]]), 1, r"`x`.*finite"),
        (torch.zeros(5, 2, dtype=torch.int64), 1, r"`x`.*floating"),
    ],
)
def test_kmeans_errors(x, k, match):
    with pytest.raises(ValueError, match=match):
        kmeans(x, k)


def test_argument_errors():
    x, truth = _blobs(2, per=5)
    with pytest.raises(ValueError, match=r"`iterations`.*0"):
        kmeans(x, 2, iterations=0)
    with pytest.raises(ValueError, match=r"`k_min`.*>= 2.*1"):
        choose_k(x, k_min=1)
    with pytest.raises(ValueError, match=r"`k_max`.*k_min=4.*3"):
        choose_k(x, k_min=4, k_max=3)
    with pytest.raises(ValueError, match=r"`x`.*at least.*3.*N=2"):
        choose_k(x[:2])
    with pytest.raises(ValueError, match=r"at least 2 clusters.*1"):
        silhouette(x, torch.zeros(len(x), dtype=torch.int64))
    with pytest.raises(ValueError, match=r"`labels`.*N=10"):
        silhouette(x, truth[:3])
    with pytest.raises(ValueError, match=r"`sample`.*1"):
        silhouette(x, truth, sample=1)
