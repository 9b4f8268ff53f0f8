"""Known answers and invariants of the K-way normalized cut (diffuseg.ops.kway_ncut), and DiffCut
with ``solver="kway"`` on a tiny backbone and on the shipped toy model through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffuseg.ops.kway_ncut import eigengap_segments, kway_ncut_affinity, kway_normalized_cut, ncut_value

pytestmark = pytest.mark.usefixtures("one_thread")


def _blocks(sizes: list[int], off: float = 0.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A shuffled block-diagonal affinity: within-block weights in [0.5, 1.5], `off` between blocks."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.cat([torch.full((k,), i) for i, k in enumerate(sizes)])
    n = len(truth)
    weights = 0.5 + torch.rand(n, n, generator=g)
    affinity = torch.where(truth[:, None] == truth[None, :], weights, torch.full((n, n), off))
    affinity = (affinity + affinity.T) / 2
    perm = torch.randperm(n, generator=g)
    return affinity[perm][:, perm], truth[perm]


def _noisy_clusters(n: int = 96, k: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian affinity of n points around k well-separated centres: (n, n), truth (n,)."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.arange(n) % k
    points = 4 * torch.randn(k, 8, generator=g)[truth] + torch.randn(n, 8, generator=g)
    return torch.exp(-(torch.cdist(points, points) ** 2) / 8), truth


def _same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """a and b are equal up to a renaming of labels (a bijection)."""
    pairs = set(zip(a.reshape(-1).tolist(), b.reshape(-1).tolist(), strict=True))
    return len(pairs) == len(set(a.reshape(-1).tolist())) == len(set(b.reshape(-1).tolist()))


@pytest.mark.parametrize("off", [0.0, 1e-3])
@pytest.mark.parametrize("num_segments", [None, 4])
def test_block_diagonal_affinity_gives_exactly_the_blocks(off, num_segments):
    affinity, truth = _blocks([5, 9, 3, 7], off)
    if num_segments is None:
        assert eigengap_segments(affinity) == 4  # the K rule finds the 4 blocks
    labels = kway_ncut_affinity(affinity, num_segments)
    assert labels.dtype == torch.int64 and labels.shape == truth.shape
    assert _same_partition(labels, truth)
    assert sorted(labels.unique().tolist()) == [0, 1, 2, 3]
    assert ncut_value(affinity, labels) == pytest.approx(ncut_value(affinity, truth), abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes_give_the_same_blocks(dtype):
    affinity, truth = _blocks([6, 6, 10], 1e-3, seed=1)
    labels = kway_ncut_affinity(affinity.to(dtype))
    assert labels.device == affinity.device and _same_partition(labels, truth)


def test_ncut_value_known_answers():
    affinity, truth = _blocks([4, 6], 0.0)
    assert ncut_value(affinity, truth) == pytest.approx(0.0, abs=1e-6)  # no edge is cut
    assert ncut_value(affinity, torch.zeros_like(truth)) == pytest.approx(0.0, abs=1e-6)  # one segment
    assert ncut_value(affinity, truth, num_segments=3) == pytest.approx(1.0, abs=1e-6)  # an empty one adds 1
    # a complete graph of 4 nodes split 2 | 2: each side keeps 4 of its 8 units of volume
    assert ncut_value(torch.ones(4, 4), torch.tensor([0, 0, 1, 1])) == pytest.approx(1.0)


def test_objective_is_monotone_from_a_bad_start_and_reaches_the_clusters():
    affinity, truth = _noisy_clusters()
    start = torch.randint(0, 4, truth.shape, generator=torch.Generator().manual_seed(3))
    history: list[float] = []
    labels = kway_ncut_affinity(affinity, 4, init=start, history=history)
    assert len(history) >= 3  # the start and at least two accepted steps
    assert all(b <= a for a, b in zip(history, history[1:], strict=False))
    assert history[0] == pytest.approx(ncut_value(affinity, start, 4), abs=1e-5)
    assert history[-1] == pytest.approx(ncut_value(affinity, labels, 4), abs=1e-5)
    assert _same_partition(labels, truth)
    # no step: the start is returned unchanged (relabelled)
    assert _same_partition(kway_ncut_affinity(affinity, 4, init=start, max_iter=0), start)


def test_spectral_start_then_steps_never_worsen_and_are_deterministic():
    affinity, _ = _noisy_clusters(n=120, k=5, seed=2)
    affinity = affinity + 0.05  # weaker clusters: the spectral start is not always optimal
    runs = []
    for _ in range(2):
        history: list[float] = []
        runs.append(kway_ncut_affinity(affinity, 5, history=history))
        assert all(b <= a for a, b in zip(history, history[1:], strict=False))
    assert torch.equal(runs[0], runs[1])
    seeded = kway_ncut_affinity(affinity, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(seeded, runs[0])  # the default generator is a local one seeded with 0


def test_eigengap_rule_bounds_and_trivial_graphs():
    affinity, _ = _blocks([5, 5, 5, 5, 5, 5], 0.0)
    assert eigengap_segments(affinity, max_segments=8) == 6
    assert eigengap_segments(affinity, max_segments=4) in range(2, 5)  # capped
    # a complete graph has one eigenvalue 1 and the rest 0: one segment if allowed
    assert eigengap_segments(torch.ones(6, 6), min_segments=1) == 1
    assert eigengap_segments(torch.ones(6, 6)) == 2
    assert kway_ncut_affinity(torch.ones(1, 1)).tolist() == [0]
    assert kway_ncut_affinity(torch.ones(5, 5), 1).tolist() == [0] * 5


def test_zero_degree_nodes_form_their_own_segment():
    affinity, truth = _blocks([4, 5], 0.0)
    n = len(truth)
    padded = torch.zeros(n + 2, n + 2)
    padded[:n, :n] = affinity
    labels = kway_ncut_affinity(padded, 3)
    assert _same_partition(labels, torch.cat([truth, torch.tensor([2, 2])]))
    assert kway_ncut_affinity(torch.zeros(3, 3)).tolist() == [0, 0, 0]


def test_feature_map_known_answer_and_grid_error():
    g = torch.Generator().manual_seed(0)
    truth = torch.zeros(6, 8, dtype=torch.long)
    truth[:, 4:] = 1
    truth[3:, :4] = 2
    feats = (4 * torch.randn(3, 16, generator=g))[truth].permute(2, 0, 1) + 0.1 * torch.randn(16, 6, 8, generator=g)
    labels = kway_normalized_cut(feats)
    assert labels.shape == (6, 8) and _same_partition(labels, truth)
    assert kway_normalized_cut(torch.ones(4, 3, 3)).tolist() == [[0] * 3] * 3  # constant features
    with pytest.raises(ValueError, match=r"^`num_segments` 49 is more than the 48 tokens of the 6x8 grid\.$"):
        kway_normalized_cut(feats, num_segments=49)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"affinity": torch.ones(64, 64), "num_segments": 70}, r"`num_segments` 70 is more than the 64 nodes"),
        ({"affinity": torch.ones(3, 4)}, r"`affinity` must be a square \(N, N\) tensor, got \(3, 4\)"),
        ({"affinity": torch.ones(3, 3, 3)}, r"`affinity` must be a square"),
        ({"affinity": -torch.ones(3, 3)}, r"`affinity` must be non-negative, got a minimum of -1"),
        ({"affinity": torch.full((3, 3), float("nan"))}, r"`affinity` contains NaN or inf"),
        ({"affinity": torch.tensor([[1.0, 2.0], [0.0, 1.0]])}, r"`affinity` must be symmetric"),
        ({"affinity": torch.ones(3, 3, dtype=torch.long)}, r"floating-point dtype, got torch.int64"),
        ({"affinity": torch.ones(3, 3), "num_segments": 0}, r"`num_segments` must be an int >= 1, got 0"),
        ({"affinity": torch.ones(3, 3), "max_segments": 0}, r"`max_segments` must be an int >= 1, got 0"),
        ({"affinity": torch.ones(3, 3), "min_segments": 9}, r"`min_segments` 9 is more than `max_segments` 8"),
        ({"affinity": torch.ones(3, 3), "max_iter": -1}, r"`max_iter` must be an int >= 0, got -1"),
        ({"affinity": torch.ones(3, 3), "inertia": -0.5}, r"`inertia` must be a finite number >= 0, got -0.5"),
        ({"affinity": torch.ones(3, 3), "init": torch.zeros(2, dtype=torch.long)}, r"`init` must be an int tensor"),
        (
            {"affinity": torch.ones(3, 3), "num_segments": 2, "init": torch.tensor([0, 1, 2])},
            r"`init` labels must be \[0, num_segments\), got values in \[0, 2\]",
        ),
    ],
)
def test_bad_inputs_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kway_ncut_affinity(**kwargs)


# --------------------------------------------------------------------------- through DiffCut


def _extract(backbone, image, config):
    from diffuseg.methods import diffcut

    return backbone.extract(
        image,
        diffcut.requires(backbone.layer_map),
        prompts=config.prompt,
        timestep=config.timestep,
        image_size=32,
        resize_mode="crop",
        generator=torch.Generator().manual_seed(0),
    )


def test_diffcut_kway_invariants_determinism_and_cache(tiny_sdxl_backbone, quadrant_image):
    from diffuseg.methods import diffcut, get_method
    from diffuseg.methods.diffcut import DiffCutConfig
    from diffuseg.plan import Query

    config = DiffCutConfig(solver="kway", alpha=2.0)
    feats = _extract(tiny_sdxl_backbone, quadrant_image, config)
    seg = get_method("diffcut").run(feats, config, Query(), {})
    assert seg.labels.shape == (32, 32) and seg.labels.dtype == torch.int64
    assert set(seg.label_ids()) == set(range(seg.num_segments))
    tokens = seg.extras["token_labels"]
    assert tokens.shape == (4, 4) and 2 <= int(tokens.max()) + 1 <= config.max_segments
    again = diffcut.segment(_extract(tiny_sdxl_backbone, quadrant_image, config), config)
    assert torch.equal(seg.labels, again.labels)
    fixed = diffcut.segment(feats, DiffCutConfig(solver="kway", alpha=2.0, num_segments=3, refine=False))
    assert int(fixed.extras["token_labels"].max()) + 1 <= 3
    assert {k[:2] for k in feats.derived} == {("diffcut", "kway"), ("diffcut", "pamr")}  # no recursive cut
    with pytest.raises(ValueError, match=r"`num_segments` 17 is more than the 16 tokens of the 4x4 grid"):
        diffcut.segment(feats, DiffCutConfig(solver="kway", num_segments=17))


def test_diffcut_solver_settings_validate():
    from diffuseg.methods.diffcut import SOLVERS, DiffCutConfig

    assert SOLVERS == ("recursive", "kway") and DiffCutConfig().solver == "recursive"
    for bad, match in (
        ({"solver": "spectral"}, r"`solver` must be one of \('recursive', 'kway'\), got 'spectral'"),
        ({"num_segments": 0}, "num_segments"),
        ({"max_segments": 1.5}, "max_segments"),
        ({"min_segments": 9}, r"`min_segments` \(9\) must be at most `max_segments` \(8\)"),
    ):
        with pytest.raises(ValueError, match=match):
            DiffCutConfig(**bad)


def test_segment_with_the_kway_solver_on_the_toy_model(tmp_path, capsys):
    from PIL import Image

    from diffuseg.cli import main
    from diffuseg.synthetic.dataset import SyntheticScenes
    from diffuseg.synthetic.export import TOY_MODEL_DIR

    if not (TOY_MODEL_DIR / "unet" / "config.json").is_file():
        pytest.fail(f"the shipped toy model is missing from {TOY_MODEL_DIR}")
    scene = tmp_path / "scene.png"
    SyntheticScenes("test", 1)[0].image.save(scene)
    argv = ["segment", str(scene), "--model", "toy", "--method", "diffcut", "--solver", "kway"]
    argv += ["--seed", "0", "--no-progress", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    meta = json.loads((tmp_path / "out" / "scene.json").read_text())
    assert meta["config"]["solver"] == "kway" and meta["config"]["num_segments"] is None
    labels = np.asarray(Image.open(tmp_path / "out" / "scene.labels.png"))
    assert labels.shape == (128, 128) and 2 <= len(np.unique(labels)) <= meta["config"]["max_segments"]
    # 128 px on the toy model is an 8x8 token grid: 65 segments cannot exist
    assert main([*argv[:-2], "--num-segments", "65", "--out", str(tmp_path / "bad")]) != 0
    assert "65 is more than the 64 tokens" in capsys.readouterr().err
