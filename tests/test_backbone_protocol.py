"""The `Backbone` protocol (diffuseg.backbone.protocol): today's UNet backbone satisfies it, it
names no UNet, and its records (`AttentionLayer`, `LayerMap`, `PromptTokens`) give known answers."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from diffuseg.backbone.protocol import AttentionLayer, Backbone, LayerMap, PromptTokens

SOURCE = Path(__file__).resolve().parents[1] / "src" / "diffuseg"

#: The members a backbone must have today (docs/backbone_seam.md lists the ones to come).
REQUIRED = {
    "name", "family", "device", "dtype", "native_size", "size_multiple", "vae_scale_factor", "num_train_timesteps",
    "prompt_tokenizer", "to", "preprocess", "encode_images", "encode_prompts", "check_timestep", "record_bytes",
    "extract",
}  # fmt: skip
METHODS = {"to", "preprocess", "encode_images", "encode_prompts", "check_timestep", "record_bytes", "extract"}

#: Names that must not appear in the protocol's code (its docstrings may explain them).
UNET_NAMES = re.compile(
    r"unet|attn[12]|(up|down)_blocks|mid_block|transformer_blocks|added_cond|scheduler|DiffusionBackbone|diffusers",
    re.IGNORECASE,
)
#: What the protocol module may import (resolved to absolute names).
ALLOWED_IMPORTS = {
    "__future__", "collections.abc", "dataclasses", "typing", "torch",
    "diffuseg.imageio", "diffuseg.backbone.features", "diffuseg.backbone.prompts",
}  # fmt: skip


# ----------------------------------------------------------------------------- the protocol


def test_the_protocol_requires_exactly_the_members_of_today():
    declared = {n for n in vars(Backbone) if not n.startswith("_")}
    assert declared == REQUIRED


def test_the_tiny_unet_backbones_are_backbones(tiny_backbone, tiny_sdxl_backbone):
    assert isinstance(tiny_backbone, Backbone)
    assert isinstance(tiny_sdxl_backbone, Backbone)
    assert not isinstance(object(), Backbone)


def test_an_object_missing_any_member_is_not_a_backbone():
    stub = type("Stub", (), {n: (lambda self: None) if n in METHODS else 0 for n in REQUIRED})
    assert isinstance(stub(), Backbone)
    for missing in sorted(REQUIRED):
        partial = type("Partial", (), {n: v for n, v in vars(stub).items() if n != missing})
        assert not isinstance(partial(), Backbone), missing


def test_the_signatures_are_those_of_the_unet_backbone(tiny_backbone):
    from diffuseg.backbone import DiffusionBackbone

    for name in sorted(METHODS):
        ours = inspect.signature(getattr(Backbone, name)).parameters.values()
        theirs = inspect.signature(getattr(DiffusionBackbone, name)).parameters.values()
        assert [(p.name, p.kind, p.default) for p in ours] == [(p.name, p.kind, p.default) for p in theirs], name
    for name in sorted(REQUIRED - METHODS - {"prompt_tokenizer"}):  # a tokenizer is callable
        assert not callable(getattr(tiny_backbone, name)), f"{name} is a value, not a method"


def test_the_unet_backbone_answers_the_properties(tiny_backbone):
    import torch

    from diffuseg.backbone.backbone import FAMILIES

    assert tiny_backbone.family in FAMILIES and tiny_backbone.name == "tiny-sd1"
    assert isinstance(tiny_backbone.device, torch.device) and tiny_backbone.dtype == torch.float32
    assert tiny_backbone.native_size % tiny_backbone.size_multiple == 0
    assert tiny_backbone.size_multiple % tiny_backbone.vae_scale_factor == 0
    assert tiny_backbone.check_timestep(tiny_backbone.num_train_timesteps - 1) == tiny_backbone.num_train_timesteps - 1


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _imports(tree: ast.AST, package: str) -> set[str]:
    """The absolute module names `tree` (a module of `package`) imports."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            names.add(".".join(base + ([node.module] if node.module else [])))
    return names


def test_the_protocol_module_names_no_unet():
    tree = ast.parse((SOURCE / "backbone" / "protocol.py").read_text(encoding="utf-8"))
    assert _imports(tree, "diffuseg.backbone") <= ALLOWED_IMPORTS
    docs = _docstrings(tree)
    words = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.append(node.id)
        elif isinstance(node, ast.Attribute):
            words.append(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            words.append(node.name)
        elif isinstance(node, ast.arg):
            words.append(node.arg)
        elif isinstance(node, ast.alias):
            words.append(node.name)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            words.append(node.value)
    assert [w for w in words if UNET_NAMES.search(w)] == []


@pytest.mark.parametrize("module", ["imageio.py", "backbone/features.py", "backbone/prompts.py"])
def test_what_the_protocol_imports_imports_no_diffusion_library(module):
    tree = ast.parse((SOURCE / module).read_text(encoding="utf-8"))
    assert {m for m in _imports(tree, "diffuseg.x") if m.split(".")[0] in ("diffusers", "transformers")} == set()


# ----------------------------------------------------------------------------- the layer map


def _sd1_like() -> LayerMap:
    """Encoder levels at strides 1 and 2, a mid block at 4, a decoder back to 1."""
    layers = [
        AttentionLayer("d0.a", "image", 1, 8), AttentionLayer("d0.c", "text", 1, 8),
        AttentionLayer("d1.a", "image", 2, 8), AttentionLayer("d1.c", "text", 2, 8),
        AttentionLayer("m.a", "image", 4, 8),
        AttentionLayer("u1.a", "image", 2, 8), AttentionLayer("u0.a", "image", 1, 8),
    ]  # fmt: skip
    return LayerMap(layers, "d1.a", ["u0", "u1"])


def test_levels_run_from_the_coarsest_grid_in_forward_order():
    lm = _sd1_like()
    assert lm.levels("image") == (("m.a",), ("d1.a", "u1.a"), ("d0.a", "u0.a"))
    assert lm.levels("text") == (("d1.c",), ("d0.c",))
    assert lm.finest("image") == ("d0.a", "u0.a")
    assert [a.path for a in lm.layers("text")] == ["d0.c", "d1.c"]
    assert lm.decoder_outputs == ("u0", "u1") and lm.feature_layer == "d1.a"


def test_grids_are_the_latent_divided_by_the_stride_rounded_up():
    lm = _sd1_like()
    assert lm.grid("d0.a", (13, 9)) == (13, 9)
    assert lm.grid("d1.c", (13, 9)) == (7, 5)
    assert lm.grid("m.a", (13, 9)) == (4, 3)
    with pytest.raises(ValueError, match="no attention layer at 'x'"):
        lm.grid("x", (8, 8))
    with pytest.raises(ValueError, match="latent_size"):
        lm.grid("m.a", (0, 8))


def test_a_joint_attention_model_has_one_level_of_each_kind():
    """SD3.5-shaped: joint attention in every block (both kinds, one path), an image-only
    `attn2`-like extra layer in block 0; patch 2: a 128x128 latent (1024 px) gives 64x64 tokens."""
    layers = [AttentionLayer("b0.joint", "image", 2, 24), AttentionLayer("b0.joint", "text", 2, 24)]
    layers += [AttentionLayer("b0.extra", "image", 2, 24)]
    layers += [AttentionLayer(f"b{i}.joint", k, 2, 24) for i in (1, 2) for k in ("image", "text")]
    lm = LayerMap(tuple(layers), "b1", tuple(f"b{i}" for i in range(3)))
    assert lm.levels("image") == (("b0.joint", "b0.extra", "b1.joint", "b2.joint"),)
    assert lm.finest("text") == ("b0.joint", "b1.joint", "b2.joint")
    assert lm.grid("b0.joint", (128, 128)) == (64, 64)


def test_layer_maps_refuse_what_cannot_be_answered():
    a = AttentionLayer("x", "image")
    with pytest.raises(ValueError, match="twice"):
        LayerMap((a, a))
    with pytest.raises(ValueError, match="decoder_outputs"):
        LayerMap((a,), None, ("u", "u"))
    with pytest.raises(ValueError, match="`kind`"):
        LayerMap((a,)).levels("self")
    with pytest.raises(ValueError, match="no image->text attention"):
        LayerMap((a,)).levels("text")
    with pytest.raises(ValueError, match="AttentionLayer"):
        LayerMap(("x",))
    for bad in (dict(path=""), dict(kind="cross"), dict(stride=0), dict(heads=True)):
        with pytest.raises(ValueError):
            AttentionLayer(**{"path": "x", "kind": "image", **bad})


def test_records_are_frozen_and_hashable():
    lm = _sd1_like()
    assert hash(lm) == hash(_sd1_like()) and lm == _sd1_like()
    with pytest.raises(dataclasses.FrozenInstanceError):
        lm.feature_layer = "u0"  # type: ignore[misc]


def unet_layer_map(unet) -> LayerMap:
    """The UNet's layer map, as proposed for `diffuseg.backbone.layers.unet_layer_map`
    (docs/backbone_seam.md, step 2): until it lands, the reference the finders are held to."""
    from diffuseg.backbone.layers import attention_grids, deepest_encoder_self_attention

    side = 2 ** (len(unet.down_blocks) + 1)  # any latent keeps the levels apart
    kinds = {"attn1": "image", "attn2": "text"}
    attention = tuple(
        AttentionLayer(path, kinds[path.rsplit(".", 1)[-1]], side // h, unet.get_submodule(path).heads)
        for path, (h, _) in attention_grids(unet, (side, side)).items()
    )
    try:
        feature = deepest_encoder_self_attention(unet)
    except ValueError:
        feature = None
    return LayerMap(attention, feature, tuple(f"up_blocks.{j}" for j in range(len(unet.up_blocks))))


@pytest.mark.parametrize("fixture", ["tiny_backbone", "tiny_sdxl_backbone"])
def test_the_unet_layer_map_gives_the_finders_answers(fixture, request):
    from diffuseg.backbone.layers import (
        attention_grids,
        attention_levels,
        deepest_encoder_self_attention,
        finest_attention_layers,
    )

    unet = request.getfixturevalue(fixture).unet
    lm = unet_layer_map(unet)
    for kind, name in (("image", "attn1"), ("text", "attn2")):
        assert lm.levels(kind) == tuple(attention_levels(unet, name))
        assert lm.finest(kind) == finest_attention_layers(unet, name)
    assert {a.path: lm.grid(a.path, (13, 9)) for a in lm.attention} == attention_grids(unet, (13, 9))
    assert lm.feature_layer == deepest_encoder_self_attention(unet)
    assert len(lm.decoder_outputs) == len(unet.up_blocks)


# ----------------------------------------------------------------------------- prompt tokens


def _sd3_like() -> PromptTokens:
    clip = PromptTokens.of("clip", [49406, 2368, 49407, 49407], ["<s>", "cat</w>", "</s>", "</s>"])
    t5 = PromptTokens.of("t5", [1712, 1, 0], ["▁cat", "</s>", "<pad>"])
    return clip + t5


def test_joined_encoders_keep_their_positions_and_give_columns():
    tokens = _sd3_like()
    assert len(tokens) == 7 and tokens.encoder_names == ("clip", "t5")
    assert tokens.positions == (0, 1, 2, 3, 0, 1, 2)
    assert tokens.columns("clip", [1]) == [1]  # CLIP first: its positions are its columns
    assert tokens.columns("t5", [0, 1]) == [4, 5]  # T5 after the 4 CLIP tokens
    assert tokens.ids_of("t5") == (1712, 1, 0) and tokens.ids_of("clip")[1] == 2368
    assert tokens.ids_of("umt5") == ()


def test_text_first_or_single_encoder_columns_are_positions():
    t5 = PromptTokens.of("t5", [1712, 1], ["▁cat", "</s>"])
    assert t5.columns("t5", [0]) == [0]
    shuffled = PromptTokens((5, 6), ("b", "a"), ("x", "x"), (1, 0))
    assert shuffled.ids_of("x") == (6, 5) and shuffled.columns("x", [0, 1]) == [1, 0]


def test_prompt_tokens_refuse_inconsistent_fields():
    with pytest.raises(ValueError, match="one entry per token"):
        PromptTokens((1, 2), ("a",), ("clip", "clip"), (0, 1))
    with pytest.raises(ValueError, match=">= 0"):
        PromptTokens.of("clip", [-1], ["a"])
    with pytest.raises(ValueError, match="non-empty"):
        PromptTokens.of("", [1], ["a"])
    with pytest.raises(ValueError, match="twice"):
        PromptTokens.of("clip", [1], ["a"]) + PromptTokens.of("clip", [2], ["b"])
    with pytest.raises(ValueError, match=r"positions \[4\]"):
        _sd3_like().columns("clip", [4])


def test_a_unet_prompt_is_one_clip_run_whose_spans_are_columns(tiny_backbone):
    from diffuseg.labeling.spans import token_spans

    encoded = tiny_backbone.encode_prompts(["a photo of a cat"])
    tokens = PromptTokens.of("clip", encoded.token_ids[0].tolist(), encoded.tokens[0])
    assert len(tokens) == encoded.embeds.shape[1]  # one column per text-encoder state
    (span,) = token_spans(tiny_backbone.prompt_tokenizer, tokens.ids_of("clip"), ["cat"])
    assert span and tokens.columns("clip", span) == span
