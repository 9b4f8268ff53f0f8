"""One conformance test over the method registry (timm / scikit-learn style)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from diffuseg.backbone.backbone import FAMILIES
from diffuseg.methods import KINDS, get_method, list_methods
from diffuseg.plan import Pass, Query
from diffuseg.segmenter import Segmenter


def _small_overrides(spec) -> dict:
    """Settings that fit the tiny models: a 32 px input, a prompt template within the tiny
    tokenizer's 14-token budget (it spells words letter by letter)."""
    fields = {f.name for f in dataclasses.fields(spec.config_cls)}
    small = {"image_size": 32, "template": "{class}"}
    return {k: v for k, v in small.items() if k in fields}


def _resources(spec, backbone) -> dict:
    """Stand-ins for the extra models a method requires (tests of the plumbing only)."""
    out = {}
    for res in spec.resources:
        if res.required and res.name == "checkpoint":  # Seg-diffusion: an untrained mask UNet
            import copy

            from diffuseg.segdiffusion import widen_conv_in
            from diffuseg.segdiffusion.sampler import MaskModel

            out[res.name] = MaskModel(widen_conv_in(copy.deepcopy(backbone.unet)).eval(), {})
        elif res.required:
            raise AssertionError(f"no test stand-in for the required resource {res.name!r} of {spec.name}")
    return out


def _small_overrides_for_run(spec) -> dict:
    fields = {f.name for f in dataclasses.fields(spec.config_cls)}
    small = {"steps": 2, "ensemble": 2}  # samplers: a short run
    return {**_small_overrides(spec), **{k: v for k, v in small.items() if k in fields}}


def test_registry_lists_the_core_methods():
    names = list_methods()
    assert {"diffseg", "diffcut", "slic", "kmeans-color", "single-segment"} <= set(names)
    with pytest.raises(ValueError, match="unknown method"):
        get_method("no-such-method")


@pytest.mark.parametrize("name", list_methods())
def test_method_conformance(name, tiny_backbone, quadrant_image):
    spec = get_method(name)
    assert spec.kind in KINDS and spec.description
    config = spec.config_cls()  # default-constructible, frozen, JSON-serialisable
    assert dataclasses.is_dataclass(config)
    json.dumps(dataclasses.asdict(config))
    fields = dataclasses.fields(config)
    if fields:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(config, fields[0].name, None)
    for family, preset in spec.presets.items():  # every preset is a valid config of a known family
        assert family in FAMILIES and spec.make_config(family) == spec.config_cls(**preset)
    query = Query(classes=(("object",),) if spec.needs_classes else ())
    pass_ = spec.plan(spec.make_config(**_small_overrides(spec)), query, tiny_backbone)
    assert isinstance(pass_, Pass)
    hash(pass_)  # passes are cache and batch keys
    # one-letter names: every open-vocabulary prompt fits the tiny tokenizer's 14 tokens
    image = Query(image=quadrant_image, classes="r, g|l, b") if spec.needs_classes else quadrant_image
    resources = _resources(spec, tiny_backbone)
    seg = Segmenter(tiny_backbone, spec, resources=resources, **_small_overrides_for_run(spec))
    a = seg(image, generator=torch.Generator().manual_seed(0))
    seg2 = Segmenter(tiny_backbone, spec, resources=resources, **_small_overrides_for_run(spec))
    b = seg2(image, generator=torch.Generator().manual_seed(0))
    labels = a.labels
    assert labels.dtype == torch.int64 and labels.ndim == 2
    assert labels.min() >= 0 and labels.max() < a.num_segments
    assert a.method == name
    if a.scores is not None:
        assert torch.isfinite(a.scores).all()
    if spec.open_vocabulary:  # labels index the query's classes and carry their names
        assert a.names == ["r", "g", "b"] and a.num_segments <= 3
    assert torch.equal(a.labels, b.labels)  # deterministic with a fixed generator
    assert seg.model_calls == (1 if pass_.uses_model else 0)
    seg.resegment()  # same settings: the recorded features are re-used
    assert seg.model_calls == (1 if pass_.uses_model else 0)


@pytest.mark.parametrize("name", list_methods())
def test_every_config_field_is_a_cli_option(name):
    from diffuseg.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["segment"]
    dests = {a.dest for a in sub._actions}
    fields = {f.name for f in dataclasses.fields(get_method(name).config_cls)}
    assert fields <= dests, sorted(fields - dests)
