"""The proving-ground training loop on a tiny config: stages, resume, export, loading."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffuseg.synthetic.model import ToyModelConfig  # noqa: E402
from diffuseg.synthetic.scenes import SceneConfig  # noqa: E402
from diffuseg.synthetic.train import TrainConfig, min_snr_weight  # noqa: E402


def _tiny(out) -> TrainConfig:
    return TrainConfig(
        out=str(out),
        num_scenes=8,
        vae_steps=2,
        vae_batch=2,
        steps=3,
        batch_size=2,
        warmup_steps=1,
        log_every=1,
        checkpoint_minutes=100.0,
        model=ToyModelConfig(
            image_size=16,
            vae_channels=(8, 16),
            unet_channels=(8, 16),
            attention_heads=2,
            text_hidden=8,
            text_layers=1,
        ),
        scene=SceneConfig(size=32),
    )


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    try:
        from diffuseg.synthetic.tokenizer import bpe_path

        bpe_path()
    except ImportError as err:
        pytest.skip(str(err))
    from diffuseg.synthetic.export import train_proving_ground

    out = tmp_path_factory.mktemp("run")
    train_proving_ground(_tiny(out), command="test")
    return out


def test_training_writes_every_stage(trained_run):
    for name in (
        "pool.npz",
        "vae/config.json",
        "latents.pt",
        "checkpoint.pt",
        "config.json",
        "stages.json",
    ):
        assert (trained_run / name).exists(), name
    ckpt = torch.load(trained_run / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 3 and len(ckpt["losses"]) == 3


def test_pool_labels_match_a_re_render_from_the_seeds(trained_run, tmp_path):
    """`build_pool` writes the label maps of the scenes it renders; `build_labels` re-renders
    them for a pool without (older runs) and must give the same maps."""
    import dataclasses
    import shutil

    import numpy as np

    from diffuseg.synthetic.train import build_labels, build_pool

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(trained_run / "pool.npz", run / "pool.npz")
    config = _tiny(run)
    _, captions = build_pool(config)
    rendered = build_labels(config, captions)  # no labels.npz here: re-rendered
    stored = np.load(trained_run / "labels.npz")["labels"]
    assert rendered.dtype == np.uint8 and rendered.shape == (8, 16, 16)
    assert np.array_equal(rendered, stored)
    with pytest.raises(RuntimeError, match="another caption"):
        build_labels(dataclasses.replace(config, seed=1, out=str(tmp_path / "other")), captions)


def test_resume_extends_the_run_and_keeps_the_config(trained_run):
    from diffuseg.synthetic.export import train_proving_ground

    train_proving_ground(_tiny(trained_run), steps=5)
    ckpt = torch.load(trained_run / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 5
    assert json.loads((trained_run / "config.json").read_text())["steps"] == 5


def test_export_loads_as_a_stable_diffusion_pipeline(trained_run, tmp_path):
    from diffusers import StableDiffusionPipeline

    from diffuseg.synthetic.export import export_pipeline

    folder = export_pipeline(trained_run, tmp_path / "toy")
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (folder / sub).is_dir(), sub
    record = json.loads((folder / "TRAINING.json").read_text())
    assert record["unet_steps"] >= 3 and record["config"]["seed"] == 0
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    assert pipe.unet.dtype == torch.float32 and pipe.vae_scale_factor == 2
    image = pipe(
        "a red circle on grass",
        height=16,
        width=16,
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert image.shape == (1, 16, 16, 3)


def test_continuing_from_an_export_with_fewer_text_layers_keeps_the_lineage(trained_run, tmp_path):
    """--init-from an exported folder with text_layers=0: the encoder is cut to its embeddings,
    the grounding loss runs (labels re-rendered), and the new TRAINING.json nests the parent's."""
    import dataclasses

    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from diffuseg.synthetic.export import export_pipeline, train_proving_ground

    parent = export_pipeline(trained_run, tmp_path / "parent")
    base = _tiny(tmp_path / "child")
    config = dataclasses.replace(
        base, steps=2, grounding_weight=1.0, model=dataclasses.replace(base.model, text_layers=0)
    )
    train_proving_ground(config, init_from=str(parent), command="test")
    assert (tmp_path / "child" / "labels.npz").exists()
    child = export_pipeline(tmp_path / "child", tmp_path / "child_export")
    encoder = CLIPTextModel.from_pretrained(child, subfolder="text_encoder")
    assert encoder.config.num_hidden_layers == 0
    before = UNet2DConditionModel.from_pretrained(parent, subfolder="unet").state_dict()
    after = UNet2DConditionModel.from_pretrained(child, subfolder="unet").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    record = json.loads((child / "TRAINING.json").read_text())
    parent_record = json.loads((parent / "TRAINING.json").read_text())
    assert record["unet_steps"] == 2 and record["init_from"] == str(parent)
    assert record["parent"]["unet_steps"] == parent_record["unet_steps"]
    assert record["config"]["grounding_weight"] == 1.0


def test_export_without_checkpoint_names_the_training_command(tmp_path):
    from diffuseg.synthetic.export import export_pipeline

    with pytest.raises(FileNotFoundError, match="diffuseg train proving-ground"):
        export_pipeline(tmp_path, tmp_path / "toy")


def test_min_snr_weight_caps_low_noise_steps():
    alphas = torch.linspace(0.999, 0.001, 1000)
    t = torch.tensor([0, 500, 999])
    w_eps = min_snr_weight(alphas, t, 5.0, "epsilon")
    assert w_eps[0] < 1.0 and torch.isclose(w_eps[2], torch.tensor(1.0))
    w_v = min_snr_weight(alphas, t, 5.0, "v_prediction")
    assert torch.all(w_v <= 1.0) and torch.all(w_v > 0)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"steps": -1}, "steps"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_train_config_validates(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        TrainConfig(**kwargs)


def test_cli_refuses_to_overwrite_a_run_without_resume(trained_run, capsys):
    from diffuseg.cli import main

    assert main(["train", "proving-ground", "--out", str(trained_run)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_decoder_finetune_changes_only_the_decoder(trained_run, tmp_path):
    import shutil

    from diffusers import AutoencoderKL

    from diffuseg.synthetic.decoder import finetune_decoder

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = AutoencoderKL.from_pretrained(run / "vae").state_dict()
    finetune_decoder(run, steps=2, batch_size=2)
    after = AutoencoderKL.from_pretrained(run / "vae").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("encoder.", "quant_conv.")))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    with pytest.raises(ValueError, match="`steps`"):
        finetune_decoder(run, steps=0)


def test_zero_text_layers_leave_no_caption_summary_in_the_padding():
    """With 0 layers a token's feature is its own embedding + position: the padding tokens of
    two different captions are identical (nothing for the UNet to read but the words)."""
    from diffuseg.synthetic.model import build_text_encoder

    ids = torch.full((2, 12), 49407)  # <|endoftext|> padding
    ids[:, 0] = 49406
    ids[0, 1:4] = torch.tensor([320, 736, 2075])  # "a red circle"
    ids[1, 1:4] = torch.tensor([320, 1746, 3546])  # "a blue star"
    for layers, same in ((0, True), (1, False)):
        config = ToyModelConfig(text_hidden=8, text_layers=layers)
        encoder = build_text_encoder(config, torch.Generator().manual_seed(0)).eval()
        with torch.no_grad():
            out = encoder(ids).last_hidden_state  # (2, 12, 8)
        assert torch.allclose(out[0, 4:], out[1, 4:]) is same
        assert not torch.allclose(out[0, 2:4], out[1, 2:4])


def test_cli_rejects_negative_text_layers(tmp_path, capsys):
    from diffuseg.cli import main

    assert main(["train", "proving-ground", "--out", str(tmp_path / "run"), "--text-layers", "-1"]) == 2
    assert "`text_layers`" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
