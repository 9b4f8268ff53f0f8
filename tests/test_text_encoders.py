"""Class spans in the CLIP part, the T5 part or both of SD3's text axis (`text_encoders` of
DiffSegmenter and MaskDiffusion), on tiny SD3 / FLUX pipelines built from configs: the features
carry each row's text parts, the columns read are the chosen parts' span columns (known
answers from the recorded maps), None is the first part, and a part the model lacks is named."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_mmdit_pipelines

from diffuseg.backbone.joint_attention import JointRequest
from diffuseg.backbone.mmdit import MMDiTBackbone
from diffuseg.labeling.spans import text_columns
from diffuseg.methods import get_method
from diffuseg.methods.diffsegmenter_config import DiffSegmenterConfig
from diffuseg.methods.maskdiffusion_config import MaskDiffusionConfig
from diffuseg.ops.crossattention import diffsegmenter_scores, minmax
from diffuseg.plan import Query
from diffuseg.segmenter import Segmenter

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

SIZE = 32
CLIP = 16  # the tiny CLIP's columns; the T5 part follows with 256 (SD3's max_sequence_length)


@pytest.fixture(scope="module")
def backbones(tmp_path_factory, one_thread):
    """name -> a tiny backbone: "sd3", "sd3-drop-t5" (no T5 part), "flux"."""
    root = tmp_path_factory.mktemp("t5spans")
    pipes = tiny_mmdit_pipelines(root)
    for family in ("sd3", "flux"):
        pipes[family].save_pretrained(root / family)
    return {
        "sd3": MMDiTBackbone.from_pretrained(root / "sd3"),
        "sd3-drop-t5": MMDiTBackbone.from_pretrained(root / "sd3", drop_t5=True),
        "flux": MMDiTBackbone.from_pretrained(root / "flux"),
    }


def _image(seed: int = 0) -> torch.Tensor:
    return torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _occurrences(ids, word_ids) -> list[int]:
    """Positions of every whole occurrence of `word_ids` in `ids`, by a plain scan."""
    n, out = len(word_ids), []
    for i in range(len(ids) - n + 1):
        if list(ids[i : i + n]) == list(word_ids):
            out.extend(range(i, i + n))
    return out


def test_sd3_features_carry_each_rows_clip_and_t5_parts(backbones):
    layer = backbones["sd3"].layers()[0]
    request = JointRequest((layer,), (layer,))
    prompts = ["cat", "dog and cow"]
    features = backbones["sd3"].extract([_image(0), _image(1)], request, prompts=prompts, image_size=SIZE)
    assert len(features.text_parts) == 2
    for row, parts in enumerate(features.text_parts):
        assert [(p.encoder, p.offset, len(p.token_ids)) for p in parts] == [("clip", 0, CLIP), ("t5", CLIP, 256)]
        assert list(parts[0].token_ids) == features.token_ids[row].tolist()  # the first part is `token_ids`
        assert parts == tuple(backbones["sd3"].text_parts(prompts[row]))
    assert features.cross_attention[layer].shape[-1] == CLIP + 256  # the parts tile the text axis
    assert features.rows(1, 2).text_parts == [features.text_parts[1]]
    light = backbones["sd3-drop-t5"].extract(_image(), request, prompts="cat", image_size=SIZE)
    assert [p.encoder for p in light.text_parts[0]] == ["clip"]
    flux_layer = backbones["flux"].layers()[0]
    flux = backbones["flux"].extract(_image(), JointRequest((flux_layer,), (flux_layer,)), "cat", image_size=SIZE)
    assert [(p.encoder, p.offset, len(p.token_ids)) for p in flux.text_parts[0]] == [("t5", 0, 512)]


def test_unet_features_have_no_text_parts_and_a_choice_of_parts_is_refused(tiny_backbone, quadrant_image):
    from diffuseg.backbone.features import FeatureRequest

    features = tiny_backbone.extract(quadrant_image, FeatureRequest(cross_attention=True), prompts="cat")
    assert features.text_parts == []
    assert text_columns(features, 0, ["cat"]) == text_columns(features, 0, ["cat"], None)
    with pytest.raises(ValueError, match=r"`text_encoders` \('t5',\) .* text parts are none"):
        text_columns(features, 0, ["cat"], ("t5",))
    with pytest.raises(ValueError, match=r"`text_encoders` \('t5',\) asks for text .* parts are none"):
        seg = Segmenter(tiny_backbone, "diffsegmenter", text_encoders=("t5",))
        seg(Query(image=quadrant_image, classes="cat"), torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("name", "encoders", "have"),
    [("flux", ("clip",), r"\['t5'\]"), ("sd3-drop-t5", ("t5",), r"\['clip'\]"), ("flux", ("clip", "t5"), r"\['t5'\]")],
)
@pytest.mark.parametrize("method", ["diffsegmenter", "maskdiffusion"])
def test_a_part_the_model_lacks_is_named_with_the_parts_it_has(backbones, name, encoders, have, method):
    def run():
        seg = Segmenter(backbones[name], method, image_size=SIZE, template="{class}", text_encoders=encoders)
        seg(Query(image=_image(), classes="cat"), torch.Generator().manual_seed(0))

    with pytest.raises(ValueError, match=re.escape(f"`text_encoders` {encoders!r} asks for text")):
        run()
    with pytest.raises(ValueError, match=have):
        run()


def _hand_scores(features, columns, config) -> torch.Tensor:
    """DiffSegmenter's one-class score map (H, W), with the class map averaged by hand over
    `columns` of the recorded image->text maps."""
    cross = features.by_resolution("cross")
    maps = {hw: m[0][:, columns].mean(-1).reshape(hw)[None] for hw, m in cross.items()}
    selfs = features.by_resolution("self")
    fine = next(iter(selfs))
    weights = dict(zip(sorted(maps, key=lambda hw: hw[0] * hw[1]), config.level_weights, strict=False))
    row = diffsegmenter_scores(maps, selfs[fine][0], weights, config.refine_iterations, grid=fine)[0]
    up = F.interpolate(row[None, None], size=features.image_size, mode="bilinear", align_corners=False)[:, 0]
    return minmax(up)[0]


def test_diffsegmenter_reads_the_span_columns_of_the_chosen_parts(backbones):
    """A multi-token name twice in one prompt ("cat, a cat": c|a|t</w> each time): T5 reads
    its two spans at the T5 offset, both parts average all four, None is CLIP bit for bit."""
    backbone, method = backbones["sd3"], get_method("diffsegmenter")
    query = Query(image=_image(), classes="cat", caption="a cat")
    overrides = {"template": "{class}", "image_size": SIZE, "layers": (1, 2)}
    seg = Segmenter(backbone, "diffsegmenter", **overrides)
    features = seg.features(query, torch.Generator().manual_seed(0))
    assert features.prompts == ["cat, a cat"]
    clip, t5 = features.text_parts[0]
    cat = clip.tokenizer("cat", add_special_tokens=False).input_ids
    in_clip, in_t5 = _occurrences(clip.token_ids, cat), _occurrences(t5.token_ids, cat)
    assert len(in_clip) == len(in_t5) == 2 * len(cat) == 6
    expected = {
        ("t5",): [CLIP + i for i in in_t5],
        ("clip", "t5"): in_clip + [CLIP + i for i in in_t5],
        ("clip",): in_clip,
    }
    scores = {}
    for encoders, columns in expected.items():
        config = method.make_config("sd3", **overrides, text_encoders=encoders)
        assert text_columns(features, 0, ["cat"], encoders) == [columns]
        scores[encoders] = method.score_maps(features, config, query)[0]
        torch.testing.assert_close(scores[encoders], _hand_scores(features, columns, config), rtol=0, atol=1e-6)
    default = method.score_maps(features, method.make_config("sd3", **overrides), query)[0]
    assert torch.equal(default, scores[("clip",)])
    assert not torch.allclose(scores[("t5",)], scores[("clip",)])


def test_resegmenting_with_other_parts_does_not_reuse_the_cached_maps(backbones):
    query = Query(image=_image(), classes="cat, dog")
    seg = Segmenter(backbones["sd3"], "diffsegmenter", template="{class}", image_size=SIZE)
    clip = seg(query, torch.Generator().manual_seed(0))
    again = seg.resegment(text_encoders=("t5",))
    assert seg.model_calls == 1  # the same prompts: the features are re-used, not the maps
    fresh = Segmenter(backbones["sd3"], "diffsegmenter", template="{class}", image_size=SIZE, text_encoders="t5")
    torch.testing.assert_close(fresh(query, torch.Generator().manual_seed(0)).extras, again.extras, rtol=0, atol=0)
    assert not torch.equal(clip.extras["class_scores"], again.extras["class_scores"])


def test_a_name_cut_off_in_clip_is_found_in_t5(backbones):
    """The joined prompt "cat and dog and cow and pig" takes 24 letter tokens: past the tiny CLIP's
    14-token budget. It is refused for the CLIP part alone, and read in T5 with "t5"."""
    backbone, query = backbones["sd3"], Query(image=_image(), classes="cat, dog, cow, pig")
    overrides = {"template": "{class}", "image_size": SIZE, "layers": (1, 2), "feature_blocks": (1, 2)}
    with pytest.raises(ValueError, match="14-token budget: 2 of the 4 classes fit"):
        Segmenter(backbone, "maskdiffusion", **overrides)(query, torch.Generator().manual_seed(0))
    seg = Segmenter(backbone, "maskdiffusion", **overrides, text_encoders=("clip", "t5"))
    out = seg(query, torch.Generator().manual_seed(0))
    assert out.names == ["cat", "dog", "cow", "pig"] and out.extras["class_attention"].shape[0] == 4
    features = seg.features(query, torch.Generator().manual_seed(0))
    cat, pig = text_columns(features, 0, ["cat", "pig"], ("clip", "t5"))
    assert min(pig) >= CLIP and len(pig) == 3  # only T5 holds "pig"
    assert len(cat) == 6 and min(cat) < CLIP <= max(cat)  # "cat" in both parts: averaged over both
    with pytest.raises(ValueError, match=r"\['pig'\] do not occur in the prompt's tokens of `text_encoders`"):
        text_columns(features, 0, ["cat", "pig"], ("clip",))
    t5 = get_method("maskdiffusion").make_config("sd3", **overrides, text_encoders=("t5",))
    assert get_method("maskdiffusion").segment(features, t5, query).labels.shape == (SIZE, SIZE)


def test_maskdiffusion_none_is_the_clip_part_bit_for_bit(backbones):
    method, query = get_method("maskdiffusion"), Query(image=_image(), classes="cat, dog")
    overrides = {"template": "{class}", "image_size": SIZE, "layers": (1, 2), "feature_blocks": (1, 2)}
    features = Segmenter(backbones["sd3"], "maskdiffusion", **overrides).features(query)
    out = {
        e: method.segment(features, method.make_config("sd3", **overrides, text_encoders=e), query)
        for e in (None, ("clip",), ("t5",))
    }
    assert torch.equal(out[None].extras["class_attention"], out[("clip",)].extras["class_attention"])
    assert not torch.equal(out[("t5",)].extras["class_attention"], out[("clip",)].extras["class_attention"])


def test_configs_validate_text_encoders():
    for cls in (DiffSegmenterConfig, MaskDiffusionConfig):
        assert cls().text_encoders is None
        assert cls(text_encoders="t5").text_encoders == ("t5",)
        assert cls(text_encoders=["t5", "clip", "t5"]).text_encoders == ("t5", "clip")
        for bad in (("bert",), (), "", ("clip", 5)):
            with pytest.raises(
                ValueError, match=r"`text_encoders` must be None or a non-empty tuple of \('clip', 't5'\), got"
            ):
                cls(text_encoders=bad)


def test_the_cli_reads_t5_spans_and_names_a_bad_choice(backbones, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from diffuseg.cli import main

    photo = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((30, 44, 3)) * 255).astype(np.uint8)).save(photo)
    argv = ["segment", str(photo), "--model", backbones["sd3"].name, "--method", "diffsegmenter", "--size", "32"]
    argv += ["--classes", "sky,grass", "--template", "{class}", "--no-progress"]
    assert main([*argv, "--text-encoders", "clip,t5", "--out", str(tmp_path / "out")]) == 0
    assert np.asarray(Image.open(tmp_path / "out" / "photo.labels.png")).shape == (30, 44)
    assert main([*argv, "--text-encoders", "bert", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "error: --text-encoders must be None or a non-empty tuple of ('clip', 't5'), got ('bert',)" in err


def test_the_demo_shows_text_encoders_as_a_text_box():
    from diffuseg.demo.controls import method_controls

    for method in ("diffsegmenter", "maskdiffusion"):
        (control,) = [c for c in method_controls(get_method(method), "sd3") if c.name == "text_encoders"]
        assert control.kind == "text" and control.default == "none"
        assert control.parse("clip, t5") == ("clip", "t5") and control.parse("none") is None
