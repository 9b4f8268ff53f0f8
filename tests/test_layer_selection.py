"""Choosing layers by index (`LayerMap.select`, the methods' ``layers`` setting): what each
method's plan asks the backbone to record, and the errors that name the valid range."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from diffuseg.backbone.protocol import AttentionLayer, LayerMap
from diffuseg.methods import diffseg, diffsegmenter, maskdiffusion
from diffuseg.plan import Query, check_layers
from diffuseg.synthetic.tokenizer import build_clip_tokenizer


def _mmdit_map(blocks: int = 4, dual: tuple[int, ...] = ()) -> LayerMap:
    """An SD3-like map: every block's ``attn`` yields an image and a text map; SD3.5's dual
    blocks add an image-only ``attn2``."""
    attention = []
    for b in range(blocks):
        attention += [
            AttentionLayer(f"blocks.{b}.attn", "image", 2, 4),
            AttentionLayer(f"blocks.{b}.attn", "text", 2, 4),
        ]
        if b in dual:
            attention.append(AttentionLayer(f"blocks.{b}.attn2", "image", 2, 4))
    outputs = tuple(f"blocks.{b}" for b in range(blocks))
    return LayerMap(tuple(attention), feature_layer=outputs[blocks // 2], decoder_outputs=outputs)


def _backbone(layer_map: LayerMap) -> SimpleNamespace:
    return SimpleNamespace(layer_map=layer_map, prompt_tokenizer=build_clip_tokenizer(32))


def test_select_counts_in_forward_order_and_from_the_end():
    layers = _mmdit_map(4, dual=(1,))
    assert layers.select("text", (1, -1)) == ("blocks.1.attn", "blocks.3.attn")
    # SD3.5's attn2 counts among the image maps only
    assert layers.select("image", (2,)) == ("blocks.1.attn2",)
    assert layers.select("image", None) == tuple(a.path for a in layers.layers("image"))
    assert layers.select("text", (2, 2)) == ("blocks.2.attn",)


@pytest.mark.parametrize("indices", [(4,), (-5,), ()])
def test_select_names_the_valid_range(indices):
    with pytest.raises(ValueError, match=r"`layers` .* it has 4, indices 0\.\.3 \(or -4\.\.-1"):
        _mmdit_map(4).select("text", indices)


@pytest.mark.parametrize("bad", [(), (1.5,), "2", (True,), [None]])
def test_check_layers_rejects_what_is_not_indices(bad):
    with pytest.raises(ValueError, match="`layers` must be None or layer indices"):
        check_layers(bad)
    assert check_layers(3) == (3,) and check_layers([1, -1]) == (1, -1) and check_layers(None) is None


def test_diffseg_records_the_chosen_layers_only():
    backbone = _backbone(_mmdit_map(4))
    request = diffseg.plan(diffseg.DiffSegConfig(layers=(1, 2)), Query(image=None), backbone).request
    assert request.self_attention == ("blocks.1.attn", "blocks.2.attn") and not request.cross_attention
    everything = diffseg.plan(diffseg.DiffSegConfig(), Query(image=None), backbone).request
    assert everything.self_attention is True
    with pytest.raises(ValueError, match="it has 4"):
        diffseg.plan(diffseg.DiffSegConfig(layers=(9,)), Query(image=None), backbone)


def test_diffsegmenter_reads_text_and_image_maps_of_the_same_layers():
    backbone = _backbone(_mmdit_map(4))
    query = Query(image=None, classes=["cat"])
    request = diffsegmenter.plan(diffsegmenter.DiffSegmenterConfig(layers=(3,)), query, backbone).request
    assert request.cross_attention == ("blocks.3.attn",) and request.self_attention == ("blocks.3.attn",)


def test_maskdiffusion_layers_replace_the_levels():
    backbone = _backbone(_mmdit_map(4))
    query = Query(image=None, classes=["cat", "dog"])
    config = maskdiffusion.MaskDiffusionConfig(layers=(2, 3), feature_blocks=(1,))
    request = maskdiffusion.plan(config, query, backbone).request
    assert request.cross_attention == ("blocks.2.attn", "blocks.3.attn") and request.hidden_states == ("blocks.1",)
    with pytest.raises(ValueError, match="choose its layers with `layers`"):
        maskdiffusion.plan(maskdiffusion.MaskDiffusionConfig(), query, backbone)  # levels 0, 1: one level here


def test_layers_none_resets_a_preset_on_the_command_line_and_in_the_demo():
    from diffuseg.config_fields import NONE, csv_parser
    from diffuseg.demo.controls import method_controls
    from diffuseg.methods import get_method

    parse = csv_parser(int, optional=True)
    assert parse(" None ") is NONE and parse("3, 4") == (3, 4)
    with pytest.raises(ValueError, match="comma-separated int"):
        csv_parser(int)("none")  # a tuple field that may not be None
    control = {c.name: c for c in method_controls(get_method("diffseg"), "toy-mmdit")}["layers"]
    preset = diffseg.PRESETS["toy-mmdit"]["layers"]  # shown as the user types it
    assert len(preset) >= 1 and control.default == ",".join(map(str, preset))
