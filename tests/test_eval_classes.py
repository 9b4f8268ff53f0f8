"""The eval runner's class settings (``classes``: all / gt-labels) and background tuning
(``tune_background``), with a test-only method that needs no model: each pixel takes the query
class whose colour channel is brightest, or the background when no channel beats the config's
``background_score``. The scenes are built so that the best background score is known: 0.51."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffuseg.cli import main
from diffuseg.datasets import ArrayDataset, Sample
from diffuseg.eval import OutputOptions, evaluate
from diffuseg.eval.runner import BACKGROUND_SWEEP, CLASS_SETTINGS
from diffuseg.methods import METHODS, MethodSpec, list_methods
from diffuseg.plan import Query, image_only
from diffuseg.types import Segmentation

CLASS_NAMES = ["background", "red", "green", "blue"]
CHANNEL = {"red": 0, "green": 1, "blue": 2}
SEEN: list[list[str]] = []  # the class names of every query the fixture method segmented


@dataclasses.dataclass(frozen=True)
class ChannelConfig:
    """Hyperparameters.

    Attributes:
        background_score: the constant score of the background class in the per-pixel argmax.
    """

    background_score: float = 0.5


def segment(features, config: ChannelConfig, query: Query, resources) -> Segmentation:
    SEEN.append(list(query.class_names))
    names = [n for n in query.class_names if n != "background"]
    image = features.images[0]  # (3, H, W) in [0, 1]
    channels = [CHANNEL.get(n, k % 3) for k, n in enumerate(names)]  # other datasets' names: any channel
    scores = [torch.full_like(image[0], config.background_score)] + [image[c] for c in channels]
    labels = torch.stack(scores).argmax(0)  # ties: the background (first)
    return Segmentation(labels=labels, names=["background", *names])


SPEC = MethodSpec(
    name="channel-threshold",
    config_cls=ChannelConfig,
    plan=image_only,
    segment=segment,
    kind="open-vocabulary",
    description="Test fixture: a colour channel per class against a constant background score.",
    needs_classes=True,
)


@pytest.fixture
def registered(monkeypatch):
    list_methods()
    monkeypatch.setitem(METHODS, SPEC.name, SPEC)
    SEEN.clear()
    return SPEC


def _scene(index: int, cls: int) -> Sample:
    """A 12 x 12 grey scene with an object of class `cls` in two brightnesses of its channel.

    Background grey levels 125 and 130 (0.490, 0.510), object levels 132 and 150 (0.518, 0.588):
    only a background score in [0.510, 0.518) separates them, i.e. 0.51 among the sweep's values.
    """
    img = np.full((12, 12, 3), 125, np.uint8)
    img[:, 6:] = 130
    lab = np.zeros((12, 12), np.int64)
    for rows, level in ((slice(2, 5), 132), (slice(7, 10), 150)):
        img[rows, 3:9] = 0
        img[rows, 3:9, CHANNEL[CLASS_NAMES[cls]]] = level
        lab[rows, 3:9] = cls
    lab[0, 0] = 255  # an ignored pixel
    return Sample(f"s{index}", Image.fromarray(img), lab)


@pytest.fixture
def dataset() -> ArrayDataset:
    return ArrayDataset("channels", CLASS_NAMES, [_scene(0, 1), _scene(1, 2), _scene(2, 1)], background_class=0)


def test_class_settings_all_and_gt_labels(registered, dataset, tmp_path):
    assert CLASS_SETTINGS == ("all", "gt-labels")
    report = evaluate(dataset, SPEC.name, output=OutputOptions(tmp_path / "a"))
    assert SEEN == [CLASS_NAMES] * 3 and report["classes"] == "all"
    SEEN.clear()
    unlabelled = _scene(3, 1)
    unlabelled.label[:] = 255
    dataset.samples.append(unlabelled)  # no class present: a query without classes
    report = evaluate(dataset, SPEC.name, output=OutputOptions(tmp_path / "g"), classes="gt-labels")
    assert SEEN == [["background", "red"], ["background", "green"], ["background", "red"], []]
    assert report["classes"] == "gt-labels" and report["background_tuning"] is None
    assert "classes **gt-labels**" in (tmp_path / "g" / "channels_channel-threshold_full.md").read_text()
    with pytest.raises(ValueError, match=r"`classes` must be one of \('all', 'gt-labels'\), got 'oracle'"):
        evaluate(dataset, SPEC.name, output=OutputOptions(tmp_path / "x"), classes="oracle")


def test_background_sweep_finds_the_known_best_value(registered, dataset, tmp_path):
    assert BACKGROUND_SWEEP[0] == 0.3 and BACKGROUND_SWEEP[-1] == 0.74 and len(BACKGROUND_SWEEP) == 45
    report = evaluate(dataset, SPEC.name, output=OutputOptions(tmp_path), tune_background=BACKGROUND_SWEEP)
    t = report["background_tuning"]
    assert t["field"] == "background_score" and t["values"] == list(BACKGROUND_SWEEP)
    assert t["best"] == 0.51 and t["best_miou"] == pytest.approx(1.0) and t["default"] == 0.5
    assert t["num_images"] == 3 and "tuned on the evaluated split" in t["note"]
    # the main metrics are those of the config's own value, and equal the sweep's at that value
    assert report["metrics"]["miou"] < 1.0
    assert t["miou"][t["values"].index(0.5)] == pytest.approx(report["metrics"]["miou"])
    plain = evaluate(dataset, SPEC.name, output=OutputOptions(tmp_path / "plain"))
    assert plain["metrics"] == report["metrics"]
    on_disk = json.loads((tmp_path / "channels_channel-threshold_full.json").read_text())
    assert on_disk["background_tuning"] == t
    md = (tmp_path / "channels_channel-threshold_full.md").read_text()
    assert "background_score tuned on the evaluated split" in md and "best 0.51, mIoU 100.0" in md
    records = [json.loads(line) for line in (tmp_path / "channels_channel-threshold_full.jsonl").open()][1:]
    assert all(float(k) in BACKGROUND_SWEEP for k in records[0]["sweep"])  # keys round-trip
    with pytest.raises(ValueError, match="`tune_background` must be a non-empty"):
        evaluate(dataset, SPEC.name, output=OutputOptions(tmp_path / "e"), tune_background=[])
    with pytest.raises(ValueError, match="`tune_background`.*'slic'"):
        evaluate(dataset, "slic", output=OutputOptions(tmp_path / "e"), tune_background=BACKGROUND_SWEEP)


class _Interrupt(RuntimeError):
    pass


def test_resumed_run_gives_the_same_tuning(registered, dataset, tmp_path):
    kw = {"tune_background": (0.45, 0.5, 0.51, 0.6)}
    full = evaluate(dataset, SPEC.name, output=OutputOptions(tmp_path / "a"), **kw)

    def stop(i, rec):
        if i == 1:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        evaluate(dataset, SPEC.name, output=OutputOptions(tmp_path / "b", on_record=stop), **kw)
    resumed = evaluate(dataset, SPEC.name, output=OutputOptions(tmp_path / "b", resume=True), **kw)
    assert resumed["background_tuning"] == full["background_tuning"]
    assert resumed["background_tuning"]["best"] == 0.51 and resumed["metrics"] == full["metrics"]


def test_cli_classes_and_tune_background(registered, dataset, tmp_path, capsys):
    base = ["eval", "--dataset", "synthetic", "--limit", "1", "--no-progress", "--out", str(tmp_path)]
    assert main([*base, "--method", "slic", "--tune-background"]) == 2
    err = capsys.readouterr().err
    assert "--tune-background" in err and "background_score" in err and "'slic'" in err
    assert main([*base, "--method", "slic", "--classes", "oracle"]) == 2
    assert "invalid choice: 'oracle'" in capsys.readouterr().err
    assert main([*base, "--method", SPEC.name, "--classes", "gt-labels", "--tune-background"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{SPEC.name} on synthetic") and "mIoU" in out[0]
    assert out[1].startswith("background_score tuned on the evaluated split: best ")
    report = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert report["classes"] == "gt-labels" and report["background_tuning"]["values"] == list(BACKGROUND_SWEEP)
