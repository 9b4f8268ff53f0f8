"""The `Backbone` protocol (diffuseg.backbone.protocol): today's UNet backbone satisfies it, it
names no UNet, and its records (`AttentionLayer`, `LayerMap`, `PromptTokens`) give known answers;
the UNet's layer map and noise / prediction members give today's answers bit for bit; and
Seg-diffusion, UNet-only, refuses any other backbone."""

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
    "layer_map", "prompt_tokenizer", "to", "preprocess", "encode_images", "encode_prompts", "check_timestep",
    "add_noise", "predict", "prediction_target", "record_bytes", "extract",
}  # fmt: skip
METHODS = {
    "to", "preprocess", "encode_images", "encode_prompts", "check_timestep", "add_noise", "predict",
    "prediction_target", "record_bytes", "extract",
}  # fmt: skip

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


@pytest.mark.parametrize("fixture", ["tiny_backbone", "tiny_sdxl_backbone"])
def test_the_unet_layer_map_gives_the_finders_answers(fixture, request):
    from diffuseg.backbone.layers import (
        attention_grids,
        attention_levels,
        deepest_encoder_self_attention,
        finest_attention_layers,
        unet_layer_map,
    )

    backbone = request.getfixturevalue(fixture)
    unet = backbone.unet
    lm = unet_layer_map(unet)
    for kind, name in (("image", "attn1"), ("text", "attn2")):
        assert lm.levels(kind) == tuple(attention_levels(unet, name))
        assert lm.finest(kind) == finest_attention_layers(unet, name)
    assert {a.path: lm.grid(a.path, (13, 9)) for a in lm.attention} == attention_grids(unet, (13, 9))
    assert all(a.heads == unet.get_submodule(a.path).heads for a in lm.attention)
    assert lm.feature_layer == deepest_encoder_self_attention(unet)
    assert lm.decoder_outputs == tuple(f"up_blocks.{j}" for j in range(len(unet.up_blocks)))
    assert backbone.layer_map == lm and backbone.layer_map is backbone.layer_map  # built once


def test_a_unet_without_down_block_attention_has_no_feature_layer():
    import torch

    from diffuseg.backbone.layers import unet_layer_map

    unet = torch.nn.Module()
    unet.down_blocks = torch.nn.ModuleList([torch.nn.Module(), torch.nn.Module()])
    unet.up_blocks = torch.nn.ModuleList([torch.nn.Module()])
    lm = unet_layer_map(unet)
    assert lm.feature_layer is None and lm.attention == () and lm.decoder_outputs == ("up_blocks.0",)


# ----------------------------------------------------------------------------- noise and prediction


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_noise_and_prediction_are_todays_calls_bit_for_bit(tiny_components, prediction_type):
    """`add_noise`, `predict`, `prediction_target` against what the class filter called before:
    the scheduler's `add_noise` and the shared target with a long (B,) t, and `unet_forward`."""
    import torch
    from diffusers import DDPMScheduler

    from diffuseg.backbone import DiffusionBackbone
    from diffuseg.ops.denoising import prediction_target

    scheduler = DDPMScheduler.from_config(tiny_components["scheduler"].config, prediction_type=prediction_type)
    backbone = DiffusionBackbone(**{**tiny_components, "scheduler": scheduler})
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(1, 4, 8, 8, generator=g).expand(3, -1, -1, -1)
    noise = torch.randn(3, 4, 8, 8, generator=g)
    text = backbone.encode_prompts(["", "a", "b"])
    for t in (0, 300, 999):
        tt = torch.full((3,), t, dtype=torch.long)
        noisy = backbone.add_noise(z0, noise, t)
        assert torch.equal(noisy, scheduler.add_noise(z0, noise, tt))
        assert torch.equal(backbone.predict(noisy, t, text, (16, 16)), backbone.unet_forward(noisy, t, text, (16, 16)))
        assert torch.equal(backbone.prediction_target(z0, noise, t), prediction_target(scheduler, z0, noise, tt))
    for bad in (-1, 1000, 1.5):
        with pytest.raises(ValueError, match="timestep"):
            backbone.add_noise(z0, noise, bad)
        with pytest.raises(ValueError, match="timestep"):
            backbone.prediction_target(z0, noise, bad)


# ----------------------------------------------------------------------------- Seg-diffusion is UNet-only


def _not_a_unet(**members):
    """A stub with every `Backbone` member (methods do nothing): a backbone, but no UNet model."""
    values = {n: (lambda self, *a, **k: None) if n in METHODS else 0 for n in REQUIRED}
    return type("MMDiTStub", (), {**values, "name": "stub/sd35-medium", "family": "sd35", **members})()


@pytest.mark.parametrize(
    "members", [{}, {"family": "sd3"}, {"family": "flux"}, {"family": "sd1"}, {"family": "sd1", "unet": None}]
)
def test_segdiffusion_refuses_a_backbone_that_is_not_a_unet(members, tmp_path):
    import torch

    from diffuseg.segdiffusion import require_unet
    from diffuseg.segdiffusion.sampler import MaskModel, SegDiffusionSampler
    from diffuseg.segdiffusion.train import SegTrainConfig, train

    stub = _not_a_unet(**members)
    assert isinstance(stub, Backbone)
    family = repr(members.get("family", "sd35"))
    message = rf"^Seg-diffusion needs a UNet model \(SD 1\.x/2\.x/SDXL\).*'stub/sd35-medium' \(family {family}\)"
    with pytest.raises(ValueError, match=message):
        require_unet(stub)
    with pytest.raises(ValueError, match=message):
        SegDiffusionSampler()(stub, torch.zeros(1, 3, 16, 16), None, {}, None)
    with pytest.raises(ValueError, match=message):
        MaskModel(torch.nn.Module(), {}).check_fits(stub)
    with pytest.raises(ValueError, match=message):
        train(stub, None, SegTrainConfig(), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before any work


def test_segdiffusion_names_a_nameless_backbone_by_its_type():
    from diffuseg.segdiffusion import require_unet

    with pytest.raises(ValueError, match=r"'MMDiTStub' \(family 'flux'\)"):
        require_unet(_not_a_unet(name="", family="flux"))


def test_segdiffusion_takes_the_unet_backbones(tiny_backbone, tiny_sdxl_backbone):
    from diffuseg.segdiffusion import require_unet

    assert require_unet(tiny_backbone) is tiny_backbone
    assert require_unet(tiny_sdxl_backbone) is tiny_sdxl_backbone


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
