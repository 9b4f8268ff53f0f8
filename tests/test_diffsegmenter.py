"""DiffSegmenter: the scoring function, class-token emphasis, the batched pass, known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffuseg.backbone.layers import finest_attention_layers
from diffuseg.methods import get_method
from diffuseg.methods.diffsegmenter import DiffSegmenterConfig, class_rows
from diffuseg.ops.crossattention import diffsegmenter_scores, minmax
from diffuseg.plan import Query
from diffuseg.segmenter import Segmenter

#: The tiny tokenizer spells words letter by letter in a 14-token budget: a short template.
TINY_TEMPLATE = "a {class}"

# ----------------------------------------------------------------------------- scoring function


def _reference_scores(cross: dict[int, torch.Tensor], a_self: torch.Tensor, weights: dict[int, float]) -> torch.Tensor:
    """The published loop (ptp_stable_voc10.py l.507-514) written out per class and resolution:
    upsample each map to the finest side, min-max it, weight, sum; then one ``A_self @ c``."""
    side = int(round(a_self.shape[0] ** 0.5))
    k = next(iter(cross.values())).shape[0]
    out = []
    for c in range(k):
        total = torch.zeros(side * side, dtype=torch.float64)
        for s, maps in cross.items():
            up = F.interpolate(maps[c][None, None].double(), size=(side, side), mode="bilinear", align_corners=False)
            up = up.flatten()
            up = (up - up.min()) / (up.max() - up.min())
            total += weights[s] * up
        out.append((a_self.double() @ total).reshape(side, side))
    return torch.stack(out)


def _softmax_rows(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, n, generator=g).mul(3).softmax(-1)


def test_scores_match_the_published_loop():
    g = torch.Generator().manual_seed(0)
    cross = {s: torch.rand(3, s, s, generator=g) for s in (2, 4, 8, 16)}
    weights = {2: 0.3, 4: 0.5, 8: 0.1, 16: 0.1}
    a_self = _softmax_rows(256, 1)
    ours = diffsegmenter_scores(cross, a_self, weights, iterations=1)
    assert ours.shape == (3, 16, 16) and ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), _reference_scores(cross, a_self, weights), rtol=1e-5, atol=1e-6)


def test_iterations_repeat_the_propagation_and_zero_skips_it():
    g = torch.Generator().manual_seed(2)
    cross = {4: torch.rand(2, 4, 4, generator=g), 8: torch.rand(2, 8, 8, generator=g)}
    weights = {4: 1.0, 8: 0.5}
    a = _softmax_rows(64, 3)
    raw = diffsegmenter_scores(cross, a, weights, iterations=0)
    two = diffsegmenter_scores(cross, a, weights, iterations=2)
    expected = (raw.flatten(1) @ a.T @ a.T).reshape(2, 8, 8)
    torch.testing.assert_close(two, expected)
    # identity self-attention changes nothing
    torch.testing.assert_close(diffsegmenter_scores(cross, torch.eye(64), weights, iterations=3), raw)


def test_a_class_peaking_in_a_quadrant_gets_that_quadrant():
    side = 8
    quad = torch.zeros(side, side)
    quad[: side // 2, : side // 2] = 1.0
    cross = {}
    for s in (4, 8):
        q_s = F.interpolate(quad[None, None], size=(s, s))[0, 0]
        cross[s] = torch.stack([q_s * 0.9 + 0.05, 1 - q_s * 0.9])  # class 0 peaks top-left, class 1 elsewhere
    # self-attention: every token attends uniformly within its own quadrant
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    q = ((rows >= side // 2).long() * 2 + (cols >= side // 2).long()).flatten()
    a_self = (q[:, None] == q[None, :]).float()
    a_self = a_self / a_self.sum(-1, keepdim=True)
    scores = diffsegmenter_scores(cross, a_self, {4: 0.5, 8: 0.5})
    labels = scores.argmax(0)
    assert (labels[: side // 2, : side // 2] == 0).all() and (labels[side // 2 :, :] == 1).all()


def test_non_square_grids():
    g = torch.Generator().manual_seed(4)
    cross = {(2, 3): torch.rand(2, 2, 3, generator=g), (4, 6): torch.rand(2, 4, 6, generator=g)}
    out = diffsegmenter_scores(cross, _softmax_rows(24, 5), {(2, 3): 0.5, (4, 6): 0.5}, grid=(4, 6))
    assert out.shape == (2, 4, 6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"cross": {}}, "empty"),
        ({"weights": {4: 1.0}}, "no weight"),
        ({"iterations": -1}, "iterations"),
        ({"self_attention": torch.ones(10, 10)}, "square grid"),
        ({"self_attention": torch.ones(16, 8)}, "square"),
    ],
)
def test_scores_reject_bad_input(kwargs, match):
    args = {
        "cross": {4: torch.rand(1, 4, 4), 2: torch.rand(1, 2, 2)},
        "self_attention": torch.eye(16),
        "weights": {4: 1.0, 2: 1.0},
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        diffsegmenter_scores(**args)


def test_minmax_maps_each_map_to_unit_range_and_constant_to_zero():
    x = torch.stack([torch.arange(6.0).reshape(2, 3), torch.full((2, 3), 7.0)])
    out = minmax(x)
    assert out[0].min() == 0 and out[0].max() == 1 and (out[1] == 0).all()


# ----------------------------------------------------------------------------- backbone pieces


def test_finest_attention_layers(tiny_backbone, tiny_sdxl_backbone):
    sd = finest_attention_layers(tiny_backbone.unet, "attn1")
    assert sd and all(k.startswith(("down_blocks.0.", "up_blocks.3.")) and k.endswith("attn1") for k in sd)
    xl = finest_attention_layers(tiny_sdxl_backbone.unet, "attn2")
    assert xl and all(k.endswith("attn2") for k in xl)
    assert not any(k.startswith("down_blocks.0.") for k in xl)  # SDXL's first level has no attention
    with pytest.raises(ValueError, match="kind"):
        finest_attention_layers(tiny_backbone.unet, "attn3")


def test_token_emphasis_is_compel_arithmetic(tiny_backbone):
    prompts = ["a cat", "a dog"]
    plain = tiny_backbone.encode_prompts(prompts).embeds
    empty = tiny_backbone.encode_prompts([""]).embeds[0]
    weighted = tiny_backbone.encode_prompts(prompts, [((2, 1.21), (3, 0.5)), ()]).embeds
    torch.testing.assert_close(weighted[0, 2], empty[2] + 1.21 * (plain[0, 2] - empty[2]))
    torch.testing.assert_close(weighted[0, 3], empty[3] + 0.5 * (plain[0, 3] - empty[3]))
    untouched = [i for i in range(plain.shape[1]) if i not in (2, 3)]
    torch.testing.assert_close(weighted[0, untouched], plain[0, untouched])
    torch.testing.assert_close(weighted[1], plain[1])
    same = tiny_backbone.encode_prompts(prompts, [((2, 1.0),), ()]).embeds
    torch.testing.assert_close(same, plain)
    with pytest.raises(ValueError, match="outside"):
        tiny_backbone.encode_prompts(prompts, [((999, 2.0),), ()])
    with pytest.raises(ValueError, match="one entry per prompt"):
        tiny_backbone.encode_prompts(prompts, [()])


# ----------------------------------------------------------------------------- the method


def test_config_defaults_are_the_references_and_validate():
    c = DiffSegmenterConfig()
    assert (c.timestep, c.emphasis, c.level_weights, c.refine_iterations) == (100, 1.21, (0.3, 0.5, 0.1, 0.1), 1)
    assert c.template == "a photograph of {class}" and c.latent_mode == "sample"
    for bad, match in (
        ({"template": "a photo"}, "template"),
        ({"emphasis": 0}, "emphasis"),
        ({"level_weights": ()}, "level_weights"),
        ({"level_weights": (0.0, 0.0)}, "level_weights"),
        ({"background_score": 1.5}, "background_score"),
        ({"refine_iterations": -1}, "refine_iterations"),
    ):
        with pytest.raises(ValueError, match=match):
            DiffSegmenterConfig(**bad)


def test_all_class_prompts_of_an_image_run_in_one_batched_call(tiny_backbone, quadrant_image):
    calls = []
    extract = tiny_backbone.extract

    def spy(pixels, request, prompts, *args, **kwargs):
        calls.append((pixels.shape[0], list(prompts), kwargs.get("prompts_per_image"), kwargs.get("token_weights")))
        return extract(pixels, request, prompts, *args, **kwargs)

    tiny_backbone.extract = spy
    seg = Segmenter(tiny_backbone, "diffsegmenter", batch_size=2, template=TINY_TEMPLATE)
    query = Query(image=quadrant_image, classes="red, green|lime, blue", caption="shapes")
    out = seg.segment_batch([query, Query(image=quadrant_image, classes="red, green|lime, blue")])
    assert len(calls) == 1 and seg.model_calls == 1
    images, prompts, per_image, weights = calls[0]
    assert images == 2 and per_image == 4  # 3 classes, one with a synonym: 4 prompts, no "" rows
    assert prompts[:4] == ["a red, shapes", "a green, shapes", "a lime, shapes", "a blue, shapes"]
    assert prompts[4] == "a red"
    assert all(w and all(v == 1.21 for _, v in w) for w in weights)
    for s in out:
        assert s.names == ["red", "green", "blue"]
        assert s.labels.max() < 3 and s.scores.shape == (3,)


def _quadrant_features(extract, side_classes: int):
    """Wrap `extract` so the first class row's cross-attention peaks in the top-left quadrant,
    the others' outside it, and self-attention stays within quadrants."""

    def spy(pixels, request, prompts, *args, **kwargs):
        feats = extract(pixels, request, prompts, *args, **kwargs)
        per_image = kwargs.get("prompts_per_image", 1)
        for key, m in feats.cross_attention.items():
            h, w = feats.layer_sizes[key]
            tl = torch.zeros(h, w)
            tl[: (h + 1) // 2, : (w + 1) // 2] = 1
            for row in range(m.shape[0]):
                target = tl if row % per_image == 0 else 1 - tl
                m[row] = target.flatten()[:, None].expand_as(m[row]) * 0.9 + 0.05
        for key, m in feats.self_attention.items():
            h, w = feats.layer_sizes[key]
            q = ((torch.arange(h)[:, None] >= (h + 1) // 2) * 2 + (torch.arange(w)[None, :] >= (w + 1) // 2)).flatten()
            a = (q[:, None] == q[None, :]).float()
            m[:] = a / a.sum(-1, keepdim=True)
        return feats

    return spy


def test_a_class_whose_cross_attention_peaks_in_a_quadrant_gets_it(tiny_backbone, quadrant_image):
    tiny_backbone.extract = _quadrant_features(tiny_backbone.extract, 2)
    seg = Segmenter(tiny_backbone, "diffsegmenter", template=TINY_TEMPLATE)
    out = seg(Query(image=quadrant_image, classes="cat, sofa"), torch.Generator().manual_seed(0))
    lab = out.labels.numpy()
    h, w = lab.shape
    assert (lab[: h // 2, : w // 2] == 0).all()
    assert (lab[h // 2 :, :] == 1).all() and (lab[:, w // 2 :] == 1).all()
    assert out.names == ["cat", "sofa"] and float(out.scores[0]) > 0.5


def test_background_class_competes_with_its_constant_score(tiny_backbone, quadrant_image):
    tiny_backbone.extract = _quadrant_features(tiny_backbone.extract, 1)
    rows = class_rows(Query(classes="background, cat"))
    assert rows == [(1, "cat")]  # no prompt for the background
    seg = Segmenter(tiny_backbone, "diffsegmenter", template=TINY_TEMPLATE)
    out = seg(Query(image=quadrant_image, classes="background, cat"), torch.Generator().manual_seed(0))
    lab = out.labels.numpy()
    h, w = lab.shape
    assert (lab[: h // 2, : w // 2] == 1).all() and (lab[h // 2 :, :] == 0).all()
    # a background score above every class score takes the whole image
    assert (seg.resegment(background_score=1.0).labels == 0).all()
    assert seg.model_calls == 1


def test_same_generator_same_result(tiny_backbone, quadrant_image):
    seg = Segmenter(tiny_backbone, "diffsegmenter", template=TINY_TEMPLATE)
    q = Query(image=quadrant_image, classes="cat, sofa")
    a = seg(q, torch.Generator().manual_seed(3)).extras["class_scores"]
    b = Segmenter(tiny_backbone, "diffsegmenter", template=TINY_TEMPLATE)(q, torch.Generator().manual_seed(3)).extras[
        "class_scores"
    ]
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "classes, match",
    [
        ((), "at least one class"),
        ("background", "at least one class"),
    ],
)
def test_bad_class_lists(tiny_backbone, quadrant_image, classes, match):
    seg = Segmenter(tiny_backbone, "diffsegmenter", template=TINY_TEMPLATE)
    with pytest.raises(ValueError, match=match):
        seg(Query(image=quadrant_image, classes=classes))


def test_spec_is_open_vocabulary_and_needs_classes():
    spec = get_method("diffsegmenter")
    assert spec.open_vocabulary and spec.needs_classes and spec.preset("toy") == {}
    assert np.isclose(spec.make_config().emphasis, 1.1**2)


def test_pass_token_weights_are_row_data():
    from diffuseg.plan import Pass

    p = Pass(prompts=("a cat", "a dog"), token_weights=(((2, 1.21),), ()))
    assert p.row_weights() == (((2, 1.21),), ())
    assert Pass(prompts=("a", "b")).row_weights() == ((), ())
    assert p.batch_key() == Pass(prompts=("x", "y")).batch_key()  # weights, like prompts, are rows
    with pytest.raises(ValueError, match="one entry per prompt"):
        Pass(prompts=("a cat", "a dog"), token_weights=(((2, 1.21),),))


class _FakeCaptioner:
    """Continues a prefix like BLIP's conditional captioning; counts its calls."""

    def __init__(self):
        self.prefixes = []

    def __call__(self, image, prefix):
        assert image.mode == "RGB"
        self.prefixes.append(prefix)
        return f"{prefix} on a mat"


def test_a_captioner_continues_each_class_prompt_when_the_query_has_no_caption(tiny_backbone, quadrant_image):
    captioner = _FakeCaptioner()
    seen = []
    extract = tiny_backbone.extract

    def spy(pixels, request, prompts, *args, **kwargs):
        seen.append(list(prompts))
        return extract(pixels, request, prompts, *args, **kwargs)

    tiny_backbone.extract = spy
    seg = Segmenter(tiny_backbone, "diffsegmenter", template="{class}", resources={"captioner": captioner})
    seg(Query(image=quadrant_image, classes="cat, dog"), torch.Generator().manual_seed(0))
    assert captioner.prefixes == ["cat", "dog"]
    assert seen[-1] == ["cat on a mat", "dog on a mat"]
    seg(Query(image=quadrant_image, classes="cat", caption="x"), torch.Generator().manual_seed(0))
    assert captioner.prefixes == ["cat", "dog"] and seen[-1] == ["cat, x"]  # the query's caption wins


def test_resegmenting_reuses_each_rows_attention(tiny_backbone, quadrant_image, monkeypatch):
    """Other refinement or background settings re-segment the cached features without
    averaging each row's attention again, with the result of a fresh run."""
    import diffuseg.methods.diffsegmenter as ds

    calls = []
    real = ds._row_maps
    monkeypatch.setattr(ds, "_row_maps", lambda *a: calls.append(1) or real(*a))
    query = Query(image=quadrant_image, classes="cat, sofa")
    seg = Segmenter(tiny_backbone, "diffsegmenter", template=TINY_TEMPLATE)
    seg(query, torch.Generator().manual_seed(0))
    again = seg.resegment(refine_iterations=0, background_score=0.2)
    assert len(calls) == 2 and seg.model_calls == 1  # one per class row, once
    fresh = Segmenter(tiny_backbone, "diffsegmenter", template=TINY_TEMPLATE, refine_iterations=0, background_score=0.2)
    torch.testing.assert_close(fresh(query, torch.Generator().manual_seed(0)).extras, again.extras, rtol=0, atol=0)
