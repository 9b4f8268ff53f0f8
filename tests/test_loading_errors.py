"""Damaged model folders and unusable devices give errors that say what to fix, not tracebacks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from diffuseg.backbone import DiffusionBackbone, NotADiffusionModelError
from diffuseg.devices import check_device

SCENE = Path(__file__).resolve().parents[1] / "examples" / "scene.png"


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path) -> Path:
    """A private copy of the tiny SD-1.x folder (conftest's `tiny_model_dir` is shared: never damage it)."""
    d = tmp_path / "model"
    shutil.copytree(tiny_model_dir, d)
    return d


def truncate(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


# ---------------------------------------------------------------------------------------------- model folders
def test_a_good_folder_still_loads(model_copy, tiny_components):
    bb = DiffusionBackbone.from_pretrained(str(model_copy))
    for name in ("unet", "vae", "text_encoder"):
        got, want = getattr(bb, name).state_dict(), tiny_components[name].state_dict()
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize(
    "rel",
    [
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
    ],
)
def test_truncated_weights_name_the_component_and_file(model_copy, rel):
    truncate(model_copy / rel)
    with pytest.raises(NotADiffusionModelError) as info:
        DiffusionBackbone.from_pretrained(str(model_copy))
    msg = str(info.value)
    component = rel.split("/")[0]
    assert str(model_copy) in msg and f"the {component} weights file {rel}" in msg
    assert "truncated" in msg and "re-download" in msg and "save_pretrained" in msg
    assert info.value.__cause__ is not None  # the loader's own exception stays chained


def test_missing_weights_file_is_named(model_copy):
    (model_copy / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(NotADiffusionModelError, match=r"unet/diffusion_pytorch_model\.safetensors is missing"):
        DiffusionBackbone.from_pretrained(str(model_copy))


@pytest.mark.parametrize(
    "rel",
    [
        "unet/config.json",
        "vae/config.json",
        "text_encoder/config.json",
        "scheduler/scheduler_config.json",
        "tokenizer/vocab.json",
    ],
)
def test_config_that_is_not_json_names_file_and_position(model_copy, rel):
    (model_copy / rel).write_text('{\n  "sample_size": 16,\n  oops\n}')
    with pytest.raises(NotADiffusionModelError) as info:
        DiffusionBackbone.from_pretrained(str(model_copy))
    msg = str(info.value)
    assert str(model_copy) in msg and f"the {rel.split('/')[0]} " in msg and rel in msg
    assert "not valid JSON" in msg and "line 3, column 3" in msg
    assert "re-download" in msg and "save_pretrained" in msg


def test_model_index_that_is_not_json(model_copy):
    (model_copy / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline",')
    with pytest.raises(NotADiffusionModelError, match=r"model_index\.json is not valid JSON \(.* at line 1, column"):
        DiffusionBackbone.from_pretrained(str(model_copy))


@pytest.mark.parametrize("content", [b"", b"[1, 2]", b"\xff\xfe\x00\xd8\x00garbage"])
def test_empty_list_or_binary_config(model_copy, content):
    (model_copy / "unet" / "config.json").write_bytes(content)
    with pytest.raises(NotADiffusionModelError, match=r"the unet config unet/config\.json"):
        DiffusionBackbone.from_pretrained(str(model_copy))


def test_config_that_does_not_fit_the_weights(model_copy):
    config = json.loads((model_copy / "unet" / "config.json").read_text())
    config["cross_attention_dim"] *= 2
    (model_copy / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(NotADiffusionModelError) as info:
        DiffusionBackbone.from_pretrained(str(model_copy))
    msg = str(info.value)
    assert "the unet weights do not fit unet/config.json" in msg and "the config asks for [" in msg
    assert "low_cpu_mem_usage" not in msg  # diffusers' advice to its own callers is not passed on
    assert info.value.__cause__ is not None


def test_other_load_failures_name_the_component_and_its_files(model_copy):
    (model_copy / "tokenizer" / "tokenizer.json").write_text('{"model": {"type": "nonsense"}}')
    with pytest.raises(NotADiffusionModelError) as info:
        DiffusionBackbone.from_pretrained(str(model_copy))
    msg = str(info.value)
    assert "cannot load the tokenizer" in msg and "tokenizer.json" in msg and "re-download" in msg
    assert info.value.__cause__ is not None


def test_cli_reports_a_truncated_model_without_traceback(model_copy, tmp_path, capsys):
    from diffuseg.cli import main

    truncate(model_copy / "unet" / "diffusion_pytorch_model.safetensors")
    rc = main(
        ["segment", str(SCENE), "--model", str(model_copy), "--out", str(tmp_path / "out"), "--method", "diffseg"]
    )
    captured = capsys.readouterr()
    assert rc == 2
    assert "unet/diffusion_pytorch_model.safetensors" in captured.err and "truncated" in captured.err
    assert "Traceback" not in captured.err + captured.out


def test_cli_reports_a_broken_config_without_traceback(model_copy, tmp_path, capsys):
    from diffuseg.cli import main

    (model_copy / "vae" / "config.json").write_text("{")
    rc = main(
        ["segment", str(SCENE), "--model", str(model_copy), "--out", str(tmp_path / "out"), "--method", "diffseg"]
    )
    captured = capsys.readouterr()
    assert rc == 2
    assert "vae/config.json" in captured.err and "JSON" in captured.err
    assert "Traceback" not in captured.err + captured.out


# ---------------------------------------------------------------------------------------------- devices
def test_cpu_is_always_usable():
    assert check_device("cpu") == torch.device("cpu")
    assert check_device(torch.device("cpu")) == torch.device("cpu")


def test_missing_cuda_device_is_a_value_error():
    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(ValueError) as info:
        check_device("cuda:7")
    msg = str(info.value)
    assert "`device`" in msg and "'cuda:7'" in msg and "Available on this machine: cpu" in msg
    assert "--device" not in msg  # library errors name the argument; the CLI adds its flag


def test_existing_cuda_devices_are_accepted():
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            check_device("cuda")
        return
    assert check_device("cuda") == torch.device("cuda")
    assert check_device(f"cuda:{torch.cuda.device_count() - 1}").index == torch.cuda.device_count() - 1


@pytest.mark.parametrize("name", ["tpu", "gpu", "cuda:x", "CPU", "", "meta"])
def test_unknown_device_names_are_value_errors_naming_the_value(name):
    with pytest.raises(ValueError) as info:
        check_device(name)
    assert f"`device` {name!r}" in str(info.value) and "cpu" in str(info.value)
    if name != "meta":  # torch.device's RuntimeError stays chained
        assert isinstance(info.value.__cause__, RuntimeError)


def test_gpu_hints_at_cuda_and_mps():
    with pytest.raises(ValueError, match="'cuda'.*'mps'"):
        check_device("gpu")


def test_mps_without_mps_is_a_value_error():
    if torch.backends.mps.is_available():
        assert check_device("mps") == torch.device("mps")
        return
    with pytest.raises(ValueError, match=r"`device` 'mps'.*MPS"):
        check_device("mps")


def test_non_string_device_is_a_type_error():
    with pytest.raises(TypeError, match="`device`"):
        check_device(0)  # type: ignore[arg-type]


def test_cuda_index_is_checked_against_the_device_count(monkeypatch):
    """The CUDA branch without a GPU: pretend this machine has two CUDA devices."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda") == torch.device("cuda")
    assert check_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError) as info:
        check_device("cuda:2")
    msg = str(info.value)
    assert "`device` 'cuda:2'" in msg and "2 CUDA devices (cuda:0, cuda:1)" in msg
    assert "Available on this machine: cpu, cuda:0, cuda:1" in msg
