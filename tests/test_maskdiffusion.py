"""MaskDiffusion: prototypes, overflow-free unnormalised attention, one pass, the k-means variant."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from diffuseg.backbone.features import FeatureRequest
from diffuseg.backbone.layers import attention_levels
from diffuseg.methods import get_method
from diffuseg.methods.maskdiffusion import MaskDiffusionConfig, MaskDiffusionKMeansConfig
from diffuseg.ops.prototypes import prototype_scores, unnormalised_class_maps
from diffuseg.plan import Query
from diffuseg.segmenter import Segmenter

# ----------------------------------------------------------------------------- prototypes


def test_prototype_scores_known_answer():
    f = torch.zeros(2, 2, 2)
    f[0, :, 0] = 1.0  # left column points along channel 0
    f[1, :, 1] = 1.0  # right column along channel 1
    a = torch.zeros(3, 2, 2)
    a[0, :, 0] = 1.0
    a[1, :, 1] = 3.0  # the weight scale does not matter
    scores = prototype_scores(f, a)  # class 2 has no attention: zero prototype
    expected = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    torch.testing.assert_close(scores, expected)
    mixed = torch.ones(1, 2, 2)  # uniform attention: the mean feature (0.5, 0.5)
    torch.testing.assert_close(prototype_scores(f, mixed), torch.full((1, 2, 2), 0.5))


@pytest.mark.parametrize(
    "features, attention, match",
    [
        (torch.ones(2, 3, 3), torch.ones(1, 2, 2), "same grid"),
        (torch.ones(2, 3, 3), -torch.ones(1, 3, 3), ">= 0"),
        (torch.ones(3, 3), torch.ones(1, 3, 3), "same grid"),
    ],
)
def test_prototype_scores_reject_bad_input(features, attention, match):
    with pytest.raises(ValueError, match=match):
        prototype_scores(features, attention)


# ----------------------------------------------------------------------------- unnormalised attention


def _cross_inputs(backbone, layer):
    """Record the inputs of one attn2 layer during a forward pass."""
    seen = {}
    module = backbone.unet.get_submodule(layer)

    def hook(_m, args, kwargs):
        seen["hidden"] = args[0] if args else kwargs["hidden_states"]
        seen["context"] = kwargs.get("encoder_hidden_states")

    return module, seen, module.register_forward_pre_hook(hook, with_kwargs=True)


def _log_unnormalised64(module, hidden, context):
    """log of the head mean of exp(QK^T / sqrt d), in float64 from the layer's own weights."""
    q = F.linear(hidden.double(), module.to_q.weight.double())
    k = F.linear(context.double(), module.to_k.weight.double())
    b, n, _ = q.shape
    h = module.heads
    q = q.view(b, n, h, -1).transpose(1, 2)
    k = k.view(b, k.shape[1], h, -1).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) * module.scale  # (B, heads, N, T)
    return torch.logsumexp(scores, dim=1) - math.log(h), scores


@pytest.mark.parametrize("gain", [1.0, 500.0])
def test_recorded_maps_are_exp_qk_and_never_overflow(tiny_backbone, quadrant_image, gain):
    """exp(record) equals exp(QK^T/sqrt d) recomputed in float64; with `gain` the logits pass
    float32's exp range (~88) and the record stays finite and exact."""
    layer = attention_levels(tiny_backbone.unet, "attn2")[0][0]
    module, seen, handle = _cross_inputs(tiny_backbone, layer)
    weight = module.to_q.weight.data.clone()
    module.to_q.weight.data.mul_(gain)
    try:
        request = FeatureRequest(cross_attention=(layer,), normalization="log", per_layer=True)
        feats = tiny_backbone.extract([quadrant_image], request, prompts="a red", timestep=0, image_size=32)
        expected, scores = _log_unnormalised64(module, seen["hidden"], seen["context"])
    finally:
        module.to_q.weight.data.copy_(weight)
        handle.remove()
    got = feats.cross_attention[layer]
    assert torch.isfinite(got).all()
    if gain > 1:
        assert scores.max() > 88  # float32 exp() would overflow here
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-4)
    # the class maps built from the logs equal a float64 computation in linear space
    grid = feats.layer_sizes[layer]
    maps = {grid: got[0]}
    ours = unnormalised_class_maps(maps, {grid: 1}, [[1], [2, 3]], grid)
    linear = expected[0].exp()  # float64: no overflow below ~709
    ref = torch.stack([linear[:, [1]].mean(-1), linear[:, [2, 3]].mean(-1)]).reshape(2, *grid)
    ref = ref / ref.flatten(1).max(-1).values[:, None, None]
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-6)


def test_log_layer_means_equal_linear_means(tiny_backbone, quadrant_image):
    """Per-resolution running means of log maps equal the log of the linear layer mean."""
    levels = attention_levels(tiny_backbone.unet, "attn2")
    layers = levels[0]
    kw = {"prompts": "a red", "timestep": 0, "image_size": 32}
    per_layer = tiny_backbone.extract(
        [quadrant_image], FeatureRequest(cross_attention=layers, normalization="log", per_layer=True), **kw
    )
    running = tiny_backbone.extract([quadrant_image], FeatureRequest(cross_attention=layers, normalization="log"), **kw)
    linear = torch.stack([per_layer.cross_attention[name].double().exp() for name in layers]).mean(0)
    (grid, value), *_ = running.by_resolution("cross").items()
    torch.testing.assert_close(value.double().exp(), linear, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(per_layer.by_resolution("cross")[grid].double().exp(), linear, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- the methods

SHORT = {"template": "{class}", "image_size": 32}


def test_one_unet_pass_serves_attention_and_features(tiny_backbone, quadrant_image):
    calls = []
    forward = tiny_backbone.unet_forward

    def spy(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    tiny_backbone.unet_forward = spy
    seg = Segmenter(tiny_backbone, "maskdiffusion", **SHORT)
    feats = seg.features(Query(image=quadrant_image, classes="a, b, c"))  # the tiny tokenizer spells letters
    assert len(calls) == 1 and feats.cross_attention and set(feats.hidden_states) == {"up_blocks.1", "up_blocks.2"}
    assert feats.prompts == ["a and b and c"] and feats.normalization == "log"
    out = seg(Query(image=quadrant_image, classes="a, b|d, c"))
    assert out.names == ["a", "b", "c"] and out.labels.max() < 3
    assert seg.model_calls == 2  # a new prompt (the synonym) is a new pass


def test_one_class_gives_a_single_label_map(tiny_backbone, quadrant_image):
    out = Segmenter(tiny_backbone, "maskdiffusion", **SHORT)(Query(image=quadrant_image, classes="red"))
    assert out.names == ["red"] and (out.labels == 0).all()


def test_background_class_and_budget(tiny_backbone, quadrant_image):
    seg = Segmenter(tiny_backbone, "maskdiffusion", background_score=1.0, **SHORT)
    out = seg(Query(image=quadrant_image, classes="background, a, b"))
    assert (out.labels == 0).all()  # every score <f, p_c> <= 1 = the background's
    with pytest.raises(ValueError, match="1 of the 3 classes fit"):
        seg(Query(image=quadrant_image, classes="abcdefgh, ijklmnop, qrstuvw"))


def test_kmeans_variant_fixed_k_rule_and_errors(tiny_backbone, quadrant_image):
    seg = Segmenter(tiny_backbone, "maskdiffusion-kmeans", k=3, image_size=32)
    out = seg(quadrant_image)
    assert out.meta["k"] == 3 and 1 <= out.num_segments <= 3
    again = Segmenter(tiny_backbone, "maskdiffusion-kmeans", k=3, image_size=32)(quadrant_image)
    assert torch.equal(out.labels, again.labels)  # seeded by the config
    auto = seg.resegment(k=None)
    assert 2 <= auto.meta["k"] <= 8 and set(auto.meta["silhouette"]) <= {str(k) for k in range(2, 9)}
    oracle = Segmenter(tiny_backbone, "maskdiffusion-kmeans", k_rule="query-classes", image_size=32)
    assert oracle(Query(image=quadrant_image, classes="a, b")).meta["k"] == 2
    with pytest.raises(ValueError, match="at least 2 query classes"):
        oracle(Query(image=quadrant_image, classes="a"))
    with pytest.raises(ValueError, match="exceeds"):
        Segmenter(tiny_backbone, "maskdiffusion-kmeans", k=5000, image_size=32)(quadrant_image)
    assert seg.model_calls == 1  # re-clustering used the recorded features


def test_configs_validate():
    for cls, bad, match in (
        (MaskDiffusionKMeansConfig, {"k": 1}, "`k`"),
        (MaskDiffusionKMeansConfig, {"k_rule": "gt"}, "k_rule"),
        (MaskDiffusionKMeansConfig, {"k_max": 1}, "k_max"),
        (MaskDiffusionConfig, {"feature_blocks": ()}, "feature_blocks"),
        (MaskDiffusionConfig, {"template": "x"}, "template"),
        (MaskDiffusionConfig, {"attention_levels": ()}, "attention_levels"),
        (MaskDiffusionConfig, {"attention_levels": (-1,)}, "attention_levels"),
        (MaskDiffusionConfig, {"background_score": 2.0}, "background_score"),
    ):
        with pytest.raises(ValueError, match=match):
            cls(**bad)
    assert get_method("maskdiffusion").open_vocabulary and get_method("maskdiffusion-kmeans").kind == "unsupervised"


def test_feature_blocks_and_levels_must_exist(tiny_backbone, quadrant_image):
    with pytest.raises(ValueError, match="feature blocks 0..3"):
        Segmenter(tiny_backbone, "maskdiffusion-kmeans", feature_blocks=(7,), image_size=32)
    with pytest.raises(ValueError, match="levels 0..3"):
        Segmenter(tiny_backbone, "maskdiffusion", attention_levels=(9,), **SHORT)


def test_eval_under_the_maskdiffusion_protocol(tiny_backbone, tmp_path):
    """`diffuseg eval --method maskdiffusion --protocol maskdiffusion`: the tiny model is told
    its input side through the query (512 on SD; 32 here through a copy of the protocol)."""
    import dataclasses

    import numpy as np
    from PIL import Image

    from diffuseg.datasets import ArrayDataset
    from diffuseg.eval import OutputOptions, evaluate
    from diffuseg.eval.protocols import get_protocol
    from diffuseg.types import Sample

    proto = dataclasses.replace(get_protocol("maskdiffusion"), name="maskdiffusion-tiny", model_size=32)
    label = np.zeros((24, 40), np.int64)
    label[:, 20:] = 1
    image = np.zeros((24, 40, 3), np.uint8)
    image[:, 20:] = (200, 40, 40)
    ds = ArrayDataset("two", ["a", "b"], [Sample("x", Image.fromarray(image), label)])
    report = evaluate(ds, "maskdiffusion", backbone=tiny_backbone, protocol=proto, output=OutputOptions(tmp_path),
                      config_overrides={"template": "{class}"}, classes="gt-labels")  # fmt: skip
    assert report["dataset"]["num_evaluated"] == 1 and report["matching"] == "none"
    assert report["metrics"]["num_pixels"] == 256 * 352


def test_resegmenting_reuses_the_names_prototype_scores(tiny_backbone, quadrant_image, monkeypatch):
    """Another `background_score` re-segments the cached features without computing the
    attention and prototype scores again, with the result of a fresh run."""
    import diffuseg.methods.maskdiffusion as md

    calls = []
    real = md.prototype_scores
    monkeypatch.setattr(md, "prototype_scores", lambda *a: calls.append(1) or real(*a))
    query = Query(image=quadrant_image, classes="background, a, b")
    seg = Segmenter(tiny_backbone, "maskdiffusion", **SHORT)
    seg(query, torch.Generator().manual_seed(0))
    again = seg.resegment(background_score=1.0)
    assert len(calls) == 1 and seg.model_calls == 1 and (again.labels == 0).all()
    fresh = Segmenter(tiny_backbone, "maskdiffusion", background_score=1.0, **SHORT)
    assert torch.equal(fresh(query, torch.Generator().manual_seed(0)).labels, again.labels)
    torch.testing.assert_close(seg.resegment(background_score=0.5).extras, fresh.resegment(background_score=0.5).extras)
