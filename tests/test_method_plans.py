"""Method plans: a method written here, outside the package, that needs per-image class names and
a resource (a stub model object) runs through `Segmenter`, `diffuseg segment` and `diffuseg eval`
without touching code outside this module. Also: passes batch and cache, multi-prompt passes and
samplers, presets, and the Query / Pass validation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffuseg.backbone.features import FeatureRequest, Features
from diffuseg.cli import main
from diffuseg.methods import METHODS, MethodSpec, list_methods
from diffuseg.plan import Pass, Query, Resource, parse_classes
from diffuseg.segmenter import Segmenter
from diffuseg.types import Segmentation


# ------------------------------------------------------------------ the fixture method
class ColourNamer:
    """The stub "model": a colour per class name, loaded from a JSON file."""

    def __init__(self, colours: dict[str, list[float]], device: str = "cpu") -> None:
        self.colours = {k.lower(): torch.tensor(v, dtype=torch.float32) for k, v in colours.items()}
        self.device = str(device)

    def colour(self, names: tuple[str, ...]) -> torch.Tensor:
        return next(self.colours[n.lower()] for n in names if n.lower() in self.colours)


def load_namer(value: str, device, dtype) -> ColourNamer:
    return ColourNamer(json.loads(Path(value).read_text()), device)


@dataclasses.dataclass(frozen=True)
class NearestColourConfig:
    """Hyperparameters.

    Attributes:
        template: prompt per class.
    """

    template: str = "a photo of a {}"


def plan(config: NearestColourConfig, query: Query, backbone, resources=None) -> Pass:
    if not query.classes:
        raise ValueError("nearest-colour needs class names (`classes`).")
    prompts = tuple(config.template.format(c[0]) for c in query.classes)  # one UNet row per class
    return Pass(request=FeatureRequest(cross_attention=True), size=32, resize_mode=query.resize_mode, prompts=prompts)


def segment(features: Features, config, query: Query, resources) -> Segmentation:
    assert features.prompts == [config.template.format(c[0]) for c in query.classes]  # its own rows
    assert features.cross_attention  # the pass really ran the model
    namer = resources["namer"]
    colours = torch.stack([namer.colour(c) for c in query.classes])  # (K, 3)
    image = features.images[0].permute(1, 2, 0)  # (H, W, 3)
    labels = torch.cdist(image.reshape(-1, 3), colours).argmin(1).reshape(image.shape[:2])
    return Segmentation(labels=labels, names=list(query.class_names))


SPEC = MethodSpec(
    name="nearest-colour",
    config_cls=NearestColourConfig,
    plan=plan,
    segment=segment,
    kind="open-vocabulary",
    description="Test fixture: each pixel takes the class whose colour (a stub model) is nearest.",
    resources=(Resource("namer", "a colour per class name (JSON file)", load=load_namer),),
    needs_classes=True,
)

COLOURS = {
    "red": [1, 0, 0],
    "green": [0, 1, 0],
    "lime": [0, 1, 0],
    "blue": [0, 0, 1],
    "black": [0, 0, 0],
    "yellow": [1, 1, 0],
}


@pytest.fixture
def registered(monkeypatch):
    list_methods()  # fill the registry, then add the fixture method to it
    monkeypatch.setitem(METHODS, SPEC.name, SPEC)
    return SPEC


@pytest.fixture
def namer_file(tmp_path):
    path = tmp_path / "namer.json"
    path.write_text(json.dumps(COLOURS))
    return path


def _quadrant_ids(labels: torch.Tensor) -> list[int]:
    h, w = labels.shape
    return [
        int(labels[y, x])
        for y, x in ((h // 4, w // 4), (h // 4, 3 * w // 4), (3 * h // 4, w // 4), (3 * h // 4, 3 * w // 4))
    ]


def test_fixture_method_through_the_segmenter(registered, tiny_backbone, quadrant_image, namer_file):
    seg = Segmenter(tiny_backbone, "nearest-colour", resources={"namer": str(namer_file)})
    assert isinstance(seg.resources["namer"], ColourNamer)  # loaded once, from the user's path
    assert seg.resources["namer"].device == str(tiny_backbone.device)  # on the backbone's device by default
    on_cpu = Segmenter(tiny_backbone, "nearest-colour", resources={"namer": str(namer_file)}, device="cpu")
    assert on_cpu.resources["namer"].device == "cpu"
    query = Query(image=quadrant_image, classes="yellow, blue, green|lime, red")
    result = seg(query)
    assert result.names == ["yellow", "blue", "green", "red"]
    assert [result.names[i] for i in _quadrant_ids(result.labels)] == ["red", "green", "blue", "yellow"]
    assert seg.model_calls == 1
    seg.resegment(template="a picture of a {}")  # a new prompt: a new pass
    assert seg.model_calls == 2
    with pytest.raises(ValueError, match="namer"):
        Segmenter(tiny_backbone, "nearest-colour")  # a required resource is missing
    with pytest.raises(ValueError, match="not used"):
        Segmenter(tiny_backbone, "nearest-colour", resources={"namer": ColourNamer(COLOURS), "other": 1})


def test_equal_passes_share_a_model_call_and_differing_ones_do_not(registered, tiny_backbone, quadrant_image):
    seg = Segmenter(tiny_backbone, "nearest-colour", batch_size=4, resources={"namer": ColourNamer(COLOURS)})
    two = Query(image=quadrant_image, classes="red,green")
    three = Query(image=quadrant_image, classes="red,green,blue")
    results = seg.segment_batch([two, two, three])
    assert seg.model_calls == 2  # one call for the two equal passes (2 rows each), one for the other
    assert [r.names for r in results] == [["red", "green"], ["red", "green"], ["red", "green", "blue"]]
    assert torch.equal(results[0].labels, results[1].labels)


def test_a_query_that_fails_fails_alone(registered, tiny_backbone, quadrant_image):
    seg = Segmenter(tiny_backbone, "nearest-colour", resources={"namer": ColourNamer(COLOURS)})
    out = seg.segment_batch(
        [Query(image=quadrant_image, classes="red"), Query(image=quadrant_image)], return_errors=True
    )
    assert isinstance(out[0], Segmentation) and isinstance(out[1], ValueError) and "class names" in str(out[1])
    with pytest.raises(ValueError, match="class names"):
        seg.segment_batch([Query(image=quadrant_image)])


def test_fixture_method_through_diffuseg_segment(registered, tiny_model_dir, tmp_path, namer_file, capsys):
    img = np.zeros((40, 60, 3), np.uint8)
    img[:, 30:] = (0, 0, 255)
    Image.fromarray(img).save(tmp_path / "two.png")
    base = ["segment", str(tmp_path / "two.png"), "--method", "nearest-colour", "--model", str(tiny_model_dir)]
    base += ["--classes", "black,blue", "--no-progress"]
    rc = main([*base, "--resource", f"namer={namer_file}", "--out", str(tmp_path / "o")])
    assert rc == 0, capsys.readouterr().err
    data = json.loads((tmp_path / "o" / "two.json").read_text())
    assert data["names"] == ["black", "blue"] and (data["height"], data["width"]) == (40, 60)
    labels = np.asarray(Image.open(tmp_path / "o" / "two.labels.png"))
    assert (labels[:, :25] == 0).all() and (labels[:, 35:] == 1).all()
    rc = main([*base, "--out", str(tmp_path / "o2")])  # no --resource
    assert rc == 2 and "--resource" in capsys.readouterr().err  # the library's `resources`, in CLI terms


def test_fixture_method_through_diffuseg_eval(registered, tiny_model_dir, tmp_path, capsys):
    from diffuseg.synthetic.scenes import CLASS_NAMES

    colours = {name: [i / len(CLASS_NAMES)] * 3 for i, name in enumerate(CLASS_NAMES)}
    (tmp_path / "namer.json").write_text(json.dumps(colours))
    rc = main(
        [
            "eval",
            "--dataset",
            "synthetic",
            "--method",
            "nearest-colour",
            "--model",
            str(tiny_model_dir),
            "--resource",
            f"namer={tmp_path / 'namer.json'}",
            "--limit",
            "2",
            "--out",
            str(tmp_path / "r"),
            "--no-progress",
            "--classes",
            "gt-labels",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    report = json.loads(next((tmp_path / "r").glob("*.json")).read_text())
    assert report["matching"] == "none" and report["dataset"]["num_evaluated"] == 2
    assert report["classes"] == "gt-labels"


# ------------------------------------------------------------------ samplers, presets, validation
@dataclasses.dataclass(frozen=True)
class CountingSampler:
    """A multi-step stand-in: returns the images as features and counts its calls."""

    calls: list = dataclasses.field(default_factory=list, compare=False, hash=False)

    def __call__(self, backbone, pixels, pass_, resources, generator):
        self.calls.append(pixels.shape[0])
        return Features(images=pixels)


def test_a_sampler_pass_runs_once_and_is_cached(tiny_backbone, quadrant_image):
    sampler = CountingSampler()

    @dataclasses.dataclass(frozen=True)
    class Config:
        steps: int = 2

    spec = MethodSpec(
        "sampled",
        Config,
        lambda c, q, b, r=None: Pass(size=32, sampler=sampler),
        lambda f, c, q, r: Segmentation(labels=torch.zeros(f.image_size, dtype=torch.long)),
    )
    seg = Segmenter(tiny_backbone, spec, batch_size=2)
    seg.segment_batch([quadrant_image, quadrant_image])
    assert sampler.calls == [2] and seg.model_calls == 1
    seg.resegment()
    assert sampler.calls == [2]  # re-segmenting runs no sampler


def test_presets_apply_by_family_and_flags_win(tiny_backbone):
    spec = dataclasses.replace(
        METHODS.get("diffseg") or __import__("diffuseg").get_method("diffseg"),
        presets={tiny_backbone.family: {"kl_thresholds": (0.2, 0.2)}},
    )
    seg = Segmenter(tiny_backbone, spec)
    assert seg.config.kl_thresholds == (0.2, 0.2) and seg.preset["family"] == tiny_backbone.family
    assert Segmenter(tiny_backbone, spec, kl_thresholds=(0.7,)).config.kl_thresholds == (0.7,)
    assert Segmenter(tiny_backbone, spec, preset="").config.kl_thresholds == (1.1, 1.1, 1.1)


def test_query_and_pass_validate_once_with_teaching_errors():
    assert parse_classes("cat, tv|monitor") == (("cat",), ("tv", "monitor"))
    with pytest.raises(ValueError, match="more than once"):
        Query(classes="cat,Cat")
    with pytest.raises(ValueError, match="empty class name"):
        Query(classes="cat,,dog")
    with pytest.raises(ValueError, match="resize_mode"):
        Query(resize_mode="zoom")
    with pytest.raises(ValueError, match="size"):
        Query(size=0)
    with pytest.raises(ValueError, match="timestep"):
        Pass(timestep=-1)
    with pytest.raises(ValueError, match="prompts"):
        Pass(prompts=())
    assert Pass(prompts="a cat").prompts == ("a cat",)
    assert hash(Pass()) == hash(Pass()) and Pass(size=32) != Pass(size=64)


def test_a_query_size_overrides_the_method_image_size_in_every_plan(tiny_backbone):
    """One rule (`Pass.for_query`): a pass takes the query's size (an evaluation protocol's) if it
    has one, else the method's `image_size`, and always the query's framing."""
    assert Pass.for_query(Query(), 64, timestep=5) == Pass(size=64, timestep=5)
    assert Pass.for_query(Query(size=32, resize_mode="crop"), 64) == Pass(size=32, resize_mode="crop")
    assert Pass.for_query(Query()) == Pass()
    for name in list_methods():
        spec = METHODS[name]
        fields = {f.name for f in dataclasses.fields(spec.config_cls)}
        small = {k: v for k, v in {"image_size": 64, "template": "{class}"}.items() if k in fields}
        config = spec.make_config(tiny_backbone.family, **small)
        probe = spec.probe_query()
        own = spec.plan(config, probe, tiny_backbone, {})
        assert (own.size, own.resize_mode) == (small.get("image_size"), "keep_aspect"), name
        fixed = spec.plan(config, dataclasses.replace(probe, size=48, resize_mode="crop"), tiny_backbone, {})
        assert (fixed.size, fixed.resize_mode) == (48, "crop"), name
