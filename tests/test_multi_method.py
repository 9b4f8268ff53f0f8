"""Several methods from one pass: the sharing rule, bit-identical results, the CLI's method lists."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest
import torch

from diffuseg.backbone.features import FeatureRequest
from diffuseg.cli import main
from diffuseg.engine.seeding import image_generators
from diffuseg.multi import MultiSegmenter, restrict, share_passes
from diffuseg.plan import Pass
from diffuseg.segmenter import Segmenter

METHODS = ("diffseg", "diffcut", "maskdiffusion-kmeans")
# Settings under which the three methods' passes agree on the tiny model (one timestep, no noise).
AGREE = {
    "diffseg": {"timestep": 300, "image_size": 64},
    "diffcut": {"timestep": 300, "image_size": 64, "add_noise": False},
    "maskdiffusion-kmeans": {"timestep": 300, "image_size": 64},
}


def _pass(**kw) -> Pass:
    kw.setdefault("request", FeatureRequest(self_attention=True))
    kw.setdefault("timestep", 300)
    return Pass(size=64, **kw)


# ------------------------------------------------------------------------------ the rule
def test_agreeing_passes_share_one_call_that_records_the_union():
    plan = share_passes(
        {
            "a": _pass(),
            "b": _pass(request=FeatureRequest(hidden_states=("down_blocks.1",), early_exit=True)),
            "c": _pass(request=FeatureRequest(hidden_states=("up_blocks.1",))),
        }
    )
    assert len(plan.groups) == 1 and plan.reasons == {}
    shared, members = plan.groups[0]
    assert members == ("a", "b", "c")
    assert shared.request.self_attention is True
    assert shared.request.hidden_states == ("down_blocks.1", "up_blocks.1")
    assert not shared.request.early_exit  # one member needs the whole model


@pytest.mark.parametrize(
    ("other", "reason"),
    [
        (_pass(timestep=50), "timestep 50 differs from 300"),
        (_pass(add_noise=True), "add_noise True differs from False"),
        (_pass(prompts=("a cat",)), "prompts"),
        (_pass(request=FeatureRequest(self_attention=("up_blocks.*",))), "other self-attention layers"),
        (_pass(request=FeatureRequest(cross_attention=True, normalization="log")), "normalization 'log'"),
    ],
)
def test_disagreeing_passes_run_apart_and_say_why(other, reason):
    plan = share_passes({"a": _pass(), "b": other})
    assert [m for _, m in plan.groups] == [("a",), ("b",)]
    assert reason in plan.reasons["b"][0] and plan.reasons["b"][0].startswith("not with a: ")


def test_image_only_methods_run_no_pass_and_need_no_reason():
    plan = share_passes({"a": _pass(), "slic": _pass(request=FeatureRequest())})
    assert [m for _, m in plan.groups] == [("a",), ("slic",)] and plan.reasons == {}


def test_fewest_passes_greedy_joins_the_first_group_that_agrees():
    plan = share_passes({"a": _pass(), "b": _pass(timestep=50), "c": _pass(timestep=50), "d": _pass()})
    assert [m for _, m in plan.groups] == [("a", "d"), ("b", "c")]


def test_restrict_shows_a_method_only_what_it_asked_for():
    from diffuseg.backbone.features import Features

    t = torch.zeros(1, 4, 4)
    features = Features(
        self_attention={"attn1@2x2": t}, cross_attention={"attn2@2x2": t}, hidden_states={"x": t, "y": t}
    )
    view = restrict(features, FeatureRequest(hidden_states=("y",)))
    assert view.self_attention == {} and view.cross_attention == {} and list(view.hidden_states) == ["y"]
    assert view.hidden_states["y"] is t  # shared, not copied
    assert set(features.hidden_states) == {"x", "y"}  # the shared features are untouched


# ------------------------------------------------------------------- bit-identical results
def test_shared_results_equal_each_method_alone(tiny_backbone, quadrant_image, one_thread):
    images = [quadrant_image, quadrant_image.rotate(90)]
    segmenters = [Segmenter(tiny_backbone, m, **AGREE[m]) for m in METHODS]
    multi = MultiSegmenter(segmenters)
    assert len(multi.plan(segmenters[0].probe).groups) == 1
    shared = multi.segment_batch(images, image_generators(0, ["a", "b"], "cpu"))
    assert multi.model_calls == 2  # one per image, for three methods
    for seg in segmenters:
        alone = seg.segment_batch(images, image_generators(0, ["a", "b"], "cpu"))
        for a, b in zip(alone, shared[seg.spec.name], strict=True):
            assert torch.equal(a.labels, b.labels)
            assert a.meta == b.meta and a.method == b.method == seg.spec.name


def test_methods_that_disagree_still_equal_their_own_runs(tiny_backbone, quadrant_image, one_thread, caplog):
    # each method's own timestep and noise (DiffSeg t 300, DiffCut t 50 with noise)
    segmenters = [Segmenter(tiny_backbone, m, image_size=64) for m in ("diffseg", "diffcut")]
    multi = MultiSegmenter(segmenters)
    with caplog.at_level("WARNING", logger="diffuseg.multi"):
        shared = multi.segment_batch([quadrant_image, quadrant_image], image_generators(1, ["a", "b"], "cpu"))
    assert multi.model_calls == 4
    assert sum("diffcut runs a model pass of its own" in r.message for r in caplog.records) == 1  # once
    alone = segmenters[1].segment_batch([quadrant_image, quadrant_image], image_generators(1, ["a", "b"], "cpu"))
    assert all(torch.equal(a.labels, b.labels) for a, b in zip(alone, shared["diffcut"], strict=True))


def test_multisegmenter_refuses_bad_lists(tiny_backbone, tiny_components):
    from diffuseg.backbone import DiffusionBackbone

    seg = Segmenter(tiny_backbone, "diffseg")
    with pytest.raises(ValueError, match="non-empty sequence"):
        MultiSegmenter([])
    with pytest.raises(ValueError, match=r"diffseg.*more than once"):
        MultiSegmenter([seg, Segmenter(tiny_backbone, "diffseg")])
    other = DiffusionBackbone(**tiny_components, name="another")
    with pytest.raises(ValueError, match="share one backbone"):
        MultiSegmenter([seg, Segmenter(other, "diffcut", image_size=64)])
    with pytest.raises(ValueError, match=r"one `batch_size`, got \[1, 2\]"):
        MultiSegmenter([seg, Segmenter(tiny_backbone, "diffcut", batch_size=2, image_size=64)])


# ------------------------------------------------------------------------------- the CLI
def _segment(images, out, method, *extra):
    return main(["segment", *images, "--model", "toy", "--method", method, "--out", str(out), "--no-progress", *extra])


def test_cli_method_list_writes_each_method_byte_identical_to_its_own_command(photo, tmp_path, capsys):
    images = [photo]
    assert _segment(images, tmp_path / "one", ",".join(METHODS), "--timestep", "300", "--no-add-noise") == 0
    assert "3 of 3 (image, method) result(s) written into" in capsys.readouterr().err
    for m in METHODS:
        extra = ["--no-add-noise"] if m != "maskdiffusion-kmeans" else []
        assert _segment(images, tmp_path / "sep" / m, m, "--timestep", "300", *extra) == 0
        names = sorted(p.name for p in (tmp_path / "sep" / m).iterdir())
        _, mismatch, errors = filecmp.cmpfiles(tmp_path / "sep" / m, tmp_path / "one" / m, names, shallow=False)
        assert names and not mismatch and not errors, m


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("diffseg,nosuch", "--method: unknown method 'nosuch'; choose from"),
        ("diffseg,diffseg", "--method names diffseg twice"),
        ("diffseg,", "empty name"),
    ],
)
def test_cli_bad_method_lists_are_usage_errors(photo, tmp_path, capsys, method, message):
    assert _segment([photo], tmp_path / "o", method) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not any(Path(tmp_path / "o").rglob("*.png"))


def test_cli_existing_outputs_keep_an_image_from_every_method(photo, tmp_path, capsys):
    assert _segment([photo], tmp_path / "o", "diffseg,slic") == 0
    capsys.readouterr()
    assert _segment([photo], tmp_path / "o", "diffseg,slic") == 1  # neither --overwrite nor --skip-existing
    err = capsys.readouterr().err
    assert "0 of 2 (image, method) result(s)" in err and "use --overwrite or --skip-existing" in err


def test_cli_an_option_of_one_listed_method_goes_to_it_alone(photo, tmp_path, capsys):
    assert _segment([photo], tmp_path / "o", "diffseg,diffcut", "--tau", "0.3") == 0
    import json

    assert json.loads((tmp_path / "o" / "diffcut" / "photo.json").read_text())["config"]["tau"] == 0.3
    assert _segment([photo], tmp_path / "p", "diffseg,diffcut", "--k-max", "3") == 2
    assert "does not apply to methods diffseg, diffcut" in capsys.readouterr().err


def test_batch_method_list_resumes(photo, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Path(photo).rename(folder / "photo.png")
    args = ["batch", str(folder), "--model", "toy", "--method", "diffseg,slic", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "diffseg" / "photo.labels.png").exists() and (
        tmp_path / "o" / "slic" / "photo.json"
    ).exists()
    assert main([*args, "--out", str(tmp_path / "o")]) == 0  # a rerun skips what is done
    assert "(2 already done)" in capsys.readouterr().err


def test_run_batch_takes_jobs_that_share_all_but_method_and_folder(tmp_path):
    from diffuseg.engine.runner import run_batch
    from diffuseg.engine.work import Job

    jobs = [Job(method="diffseg", out_dir=str(tmp_path / "a")), Job(method="slic", out_dir=str(tmp_path / "b"))]
    with pytest.raises(ValueError, match="'local' `engine` only, got 'ray'"):
        run_batch(jobs, [], engine="ray")
    with pytest.raises(ValueError, match="must share `seed`"):
        run_batch([jobs[0], Job(method="slic", out_dir=str(tmp_path / "b"), seed=1)], [])
    with pytest.raises(ValueError, match="one method and one output folder each"):
        run_batch([jobs[0], Job(method="slic", out_dir=str(tmp_path / "a"))], [])


def test_one_shared_generator_still_draws_new_noise_per_image(tiny_backbone, quadrant_image, one_thread):
    """With one generator for the batch (not one per query), images do not all get the same
    noise: the generator is drawn in turn, as a `Segmenter` draws it."""
    seg = Segmenter(tiny_backbone, "diffcut", image_size=64, add_noise=True)  # noise matters
    multi = MultiSegmenter([seg])
    g = torch.Generator().manual_seed(0)
    first = g.get_state()
    multi.segment_batch([quadrant_image, quadrant_image], g)
    assert not torch.equal(g.get_state(), first)  # the caller's generator advanced
