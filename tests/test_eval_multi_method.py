"""`diffuseg eval --method a,b,c`: one report per method from shared passes, equal to each method alone."""

from __future__ import annotations

import json

import pytest

from diffuseg.cli import main
from diffuseg.eval import OutputOptions, evaluate
from diffuseg.eval.multi_runner import check_outputs, evaluate_methods
from diffuseg.synthetic import SceneConfig, SyntheticScenes

# Settings under which the three methods' passes agree on the tiny model (one timestep, no noise).
AGREE = {
    "diffseg": {"timestep": 300, "image_size": 64},
    "diffcut": {"timestep": 300, "image_size": 64, "add_noise": False},
    "maskdiffusion-kmeans": {"timestep": 300, "image_size": 64},
}


def _counts(path) -> list:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [(r["index"], r["status"], r.get("counts")) for r in lines[1:]]


@pytest.fixture
def scenes():
    return SyntheticScenes(split="val", num_scenes=3, config=SceneConfig(size=64))


def test_several_methods_share_passes_and_equal_their_own_runs(tiny_backbone, scenes, tmp_path, one_thread):
    methods = list(AGREE)
    reports = evaluate_methods(
        scenes, methods, backbone=tiny_backbone, config_overrides=AGREE, seed=7,
        output=OutputOptions(tmp_path / "one", save_predictions=tmp_path / "one" / "pred"),
    )  # fmt: skip
    assert list(reports) == methods
    for m in methods:
        alone = evaluate(scenes, m, backbone=tiny_backbone, config_overrides=AGREE[m], seed=7,
                         output=OutputOptions(tmp_path / "sep" / m))  # fmt: skip
        name = f"synthetic-val_{m}_full"
        assert _counts(tmp_path / "one" / f"{name}.jsonl") == _counts(tmp_path / "sep" / m / f"{name}.jsonl")
        assert reports[m]["metrics"]["miou"] == alone["metrics"]["miou"]
        assert reports[m]["method"] == alone["method"]
        assert (tmp_path / "one" / f"{name}.md").exists()
        assert len(list((tmp_path / "one" / "pred" / m).glob("*.labels.png"))) == len(scenes)


def test_a_multi_run_resumes_each_method_where_its_own_file_stops(tiny_backbone, scenes, tmp_path, one_thread):
    out = OutputOptions(tmp_path)
    first = evaluate(scenes, "diffseg", backbone=tiny_backbone, config_overrides=AGREE["diffseg"], seed=3,
                     limit=2, output=out)  # fmt: skip
    assert first["dataset"]["num_evaluated"] == 2
    calls = []
    out = OutputOptions(tmp_path, resume=True, on_record=lambda i, rec: calls.append(i))
    reports = evaluate_methods(scenes, ["diffseg", "diffcut"], backbone=tiny_backbone,
                               config_overrides={m: AGREE[m] for m in ("diffseg", "diffcut")}, seed=3,
                               output=out)  # fmt: skip
    assert reports["diffseg"]["dataset"]["num_evaluated"] == reports["diffcut"]["dataset"]["num_evaluated"] == 3
    # a single run of the rest resumes the same file and changes nothing
    again = evaluate(scenes, "diffcut", backbone=tiny_backbone, config_overrides=AGREE["diffcut"], seed=3,
                     output=OutputOptions(tmp_path, resume=True))  # fmt: skip
    assert again["metrics"]["miou"] == reports["diffcut"]["metrics"]["miou"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"methods": []}, "`methods` is empty"),
        ({"methods": ["slic", "slic"]}, r"names \['slic'\] more than once"),
        ({"methods": ["slic", "diffseg"], "output": OutputOptions("x", name="run")}, "`name` 'run' would be"),
        ({"methods": ["slic", "diffseg"], "tune_background": (0.3,)}, "`tune_background` sweeps one method"),
        ({"methods": ["nosuch"]}, "nosuch"),
    ],
)
def test_check_outputs_refuses_what_a_run_of_several_cannot_do(scenes, kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_outputs(scenes, **kwargs)


def test_overrides_for_a_method_not_in_the_list_are_refused(scenes, tmp_path):
    with pytest.raises(ValueError, match=r"`config_overrides` names \['diffcut'\]"):
        evaluate_methods(scenes, ["slic"], config_overrides={"diffcut": {}}, output=OutputOptions(tmp_path))


# ------------------------------------------------------------------------------- the CLI
def _eval(out, method, *extra):
    return main(["eval", "--dataset", "synthetic", "--model", "toy", "--method", method, "--limit", "2",
                 "--out", str(out), "--no-progress", "--seed", "0", *extra])  # fmt: skip


def test_cli_method_list_prints_and_writes_one_report_per_method(tmp_path, capsys, one_thread):
    assert _eval(tmp_path, "slic,diffseg") == 0
    out = capsys.readouterr().out
    for m in ("slic", "diffseg"):
        assert f"{m} on synthetic-val (full, hungarian-per-image)" in out
        assert (tmp_path / f"synthetic-val_{m}_full.json").exists()
    assert _eval(tmp_path, "slic,diffseg") == 2  # the results exist: --resume or --overwrite
    assert "--resume" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("method", "extra", "message"),
    [
        ("slic,nosuch", (), "--method: unknown method 'nosuch'; choose from"),
        ("slic,slic", (), "--method names slic twice"),
        ("slic,diffseg", ("--name", "x"), "--name is for one method at a time"),
        ("slic,diffsegmenter", ("--tune-background",), "--tune-background is for one method at a time"),
    ],
)
def test_cli_bad_method_lists_are_usage_errors(tmp_path, capsys, method, extra, message):
    assert _eval(tmp_path / "o", method, *extra) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.jsonl"))


def test_cli_render_only_rewrites_each_listed_method_report(tmp_path, capsys, one_thread):
    assert _eval(tmp_path, "slic,single-segment") == 0
    reports = {m: tmp_path / f"synthetic-val_{m}_full.json" for m in ("slic", "single-segment")}
    before = {m: json.loads(p.read_text())["metrics"] for m, p in reports.items()}
    for p in reports.values():
        p.unlink()
    capsys.readouterr()
    assert _eval(tmp_path, "slic,single-segment", "--render-only") == 0
    assert {m: json.loads(p.read_text())["metrics"] for m, p in reports.items()} == before
    assert capsys.readouterr().out.count("mAcc") == 2


def test_cli_render_only_with_a_suite_says_what_to_do_instead(tmp_path, capsys):
    assert main(["eval", "--suite", "ovss", "--root", str(tmp_path), "--render-only"]) == 2
    assert "rerun the suite with --resume" in capsys.readouterr().err
