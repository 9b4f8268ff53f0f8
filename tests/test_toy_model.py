"""The shipped proving-ground model (`--model toy`): format, size, loading, and every method
through `diffuseg segment` on a synthetic scene (seconds: the model is 64 px, ~4 M parameters)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffuseg.synthetic.export import TOY_MODEL_DIR  # noqa: E402

MAX_BYTES = 30 * 1024 * 1024


pytestmark = pytest.mark.usefixtures("one_thread")


def _require_toy() -> Path:
    if not (TOY_MODEL_DIR / "unet" / "config.json").is_file():
        pytest.fail(
            f"the shipped toy model is missing from {TOY_MODEL_DIR}; it is committed package data "
            "(rebuild: see docs/proving_ground.md)"
        )
    return TOY_MODEL_DIR


def test_toy_folder_is_a_standard_pipeline_under_the_size_cap():
    folder = _require_toy()
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (folder / sub).is_dir() and sub in index
    assert not list(folder.rglob("*.bin")), "weights must be safetensors"
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert total <= MAX_BYTES, f"{total / 2**20:.1f} MB > 30 MB"
    record = json.loads((folder / "TRAINING.json").read_text())
    for key in ("unet_steps", "unet_train_seconds", "config", "losses", "versions"):
        assert key in record


def test_toy_loads_through_the_backbone_in_float32():
    from diffuseg.backbone.backbone import DiffusionBackbone

    _require_toy()
    backbone = DiffusionBackbone.from_pretrained("toy")
    assert backbone.unet.dtype == torch.float32
    assert backbone.vae_scale_factor == 4
    assert backbone.unet.config.sample_size * backbone.vae_scale_factor == 64
    assert len(backbone.tokenizer) == 49408


def test_toy_tokenizer_is_the_real_clip_vocabulary():
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(_require_toy(), subfolder="tokenizer")
    assert tok("a red circle").input_ids == [49406, 320, 736, 7117, 49407]
    assert tok.model_max_length == 77


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory) -> Path:
    from diffuseg.synthetic.dataset import SyntheticScenes

    path = tmp_path_factory.mktemp("scene") / "scene.png"
    SyntheticScenes("test", 1)[0].image.save(path)
    return path


def _methods() -> list[str]:
    from diffuseg.methods import list_methods

    return list_methods()


@pytest.mark.parametrize("method", _methods())
def test_every_method_runs_on_toy_through_the_cli(method, scene_png, tmp_path):
    import dataclasses

    from PIL import Image

    from diffuseg.cli import main
    from diffuseg.methods import get_method
    from diffuseg.synthetic.scenes import CLASS_NAMES

    _require_toy()
    spec = get_method(method)
    if any(r.required and r.default is None for r in spec.resources):
        pytest.skip(f"{method} needs a trained resource that does not ship with the toy model")
    fields = {f.name for f in dataclasses.fields(spec.config_cls)}
    out = tmp_path / "out"
    argv = ["segment", str(scene_png), "--model", "toy", "--method", method, "--out", str(out)]
    argv += ["--seed", "0", "--no-progress"]
    if "image_size" in fields:
        argv += ["--size", "64"]  # the toy model's native resolution
    if spec.needs_classes:
        argv += ["--classes", ",".join(CLASS_NAMES)]
    assert main(argv) == 0
    assert (out / "scene.labels.png").is_file() and (out / "scene.json").is_file()
    labels = np.asarray(Image.open(out / "scene.labels.png"))
    assert labels.shape == (128, 128) or labels.shape == (64, 64)


def test_toy_generates_an_image_from_a_caption():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(_require_toy())
    image = pipe(
        "a red circle on grass",
        height=64,
        width=64,
        num_inference_steps=3,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()


def test_missing_toy_model_names_how_to_rebuild_it(monkeypatch, tmp_path):
    from diffuseg.backbone import loading
    from diffuseg.backbone.backbone import DiffusionBackbone

    monkeypatch.setattr(loading, "toy_model_path", lambda name="toy": tmp_path / name)
    with pytest.raises(FileNotFoundError, match="diffuseg train proving-ground"):
        DiffusionBackbone.from_pretrained("toy")
    with pytest.raises(FileNotFoundError, match="diffuseg train toy-mmdit"):
        loading.resolve_model("toy-mmdit")


def test_toy_attention_means_something_on_held_out_scenes():
    """The shipped weights are trained, not random: on held-out scenes each class word's
    cross-attention is denser inside its object's mask than outside it, and DiffSeg's
    self-attention merge finds more than one segment. (The weights shipped before the grounding
    loss, whose word attention was at chance, had a median ratio of 1.2; these have about 200.)"""
    from diffuseg.backbone.backbone import DiffusionBackbone
    from diffuseg.backbone.features import FeatureRequest
    from diffuseg.plan import Query
    from diffuseg.segmenter import Segmenter
    from diffuseg.synthetic.dataset import SyntheticScenes

    _require_toy()
    backbone = DiffusionBackbone.from_pretrained("toy")
    native = backbone.unet.config.sample_size * backbone.vae_scale_factor
    scenes = SyntheticScenes("val", 8)
    ratios = []
    for sample in scenes:
        feats = backbone.extract(
            [sample.image],
            FeatureRequest(cross_attention=True),
            prompts=sample.meta["caption"],
            timestep=100,
            image_size=native,
            resize_mode="squash",
        )
        tokens = [t.replace("</w>", "") for t in feats.tokens[0]]
        for (h, w), maps in feats.by_resolution("cross").items():  # (1, h*w, T)
            if h < 8:
                continue  # 4x4 grids are too coarse for 128-pixel scenes' objects
            label = torch.from_numpy(sample.label)[None, None].float()
            for word in set(sample.meta["caption"].split()) & set(scenes.class_names):
                mask = (
                    torch.nn.functional.interpolate(
                        (label == scenes.class_names.index(word)).float(), size=(h, w), mode="area"
                    ).flatten()
                    > 0.5
                )
                if mask.all() or not mask.any():
                    continue
                a = maps[0][:, [j for j, t in enumerate(tokens) if t == word]].mean(-1)  # (h*w,)
                ratios.append(float(a[mask].mean() / a[~mask].mean()))
    assert len(ratios) >= 20
    assert np.median(ratios) > 10.0, f"median inside/outside attention ratio {np.median(ratios):.2f}"
    seg = Segmenter(backbone, "diffseg")  # the toy model's preset: tuned tau and size
    assert backbone.family == "toy" and seg.config.kl_thresholds == (0.05, 0.05, 0.05)
    counts = [len(np.unique(seg(Query(image=sample.image)).labels.numpy())) for sample in scenes]
    assert np.mean(counts) > 1.5, counts
