"""`diffuseg batch --engine ray` on a local Ray instance (num_cpus=2) with the tiny model:
outputs byte-identical to the local engine's, a killed driver, a killed worker, bad addresses.

One Ray instance serves the module (`ray_cluster`); the local engine's outputs for the 20
images (`reference`) are computed once.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffuseg.cli import main
from diffuseg.engine.work import CRASH_ENV, OUTPUTS

ray = pytest.importorskip("ray")

N_IMAGES = 20
#: Noise matters: the VAE posterior is sampled and the latent noised, from each image's generator.
NOISY = ("--add-noise", "--latent-mode", "sample", "--seed", "7")
#: The image a worker dies on once when the test arms `ARM` (see `CRASH_ENV`).
CRASH_ON = "img05"


@pytest.fixture(scope="module")
def arm_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("crash") / "armed"


@pytest.fixture(scope="module")
def ray_cluster(arm_file):
    """A local Ray instance for the module; its workers carry the worker-loss test hook (inert
    until the arm file exists)."""
    old = os.environ.get(CRASH_ENV)
    os.environ[CRASH_ENV] = f"{CRASH_ON}:{arm_file}"
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop(CRASH_ENV, None)
        else:
            os.environ[CRASH_ENV] = old


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for i in range(N_IMAGES):
        size = (40, 48) if i % 3 else (48, 40)  # two shapes: a unit may hold both
        pixels = np.random.default_rng(i).integers(0, 255, (*size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:02d}.png")
    return folder


def _args(model, images, out, *extra):
    return [
        "batch", str(images), "--model", str(model), "--size", "32", "--no-progress", "--batch-size", "2",
        "--threads", "1", "--out", str(out), *NOISY, *extra,
    ]  # fmt: skip


def _outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name.endswith(OUTPUTS)}


@pytest.fixture(scope="module")
def reference(tiny_model_dir, images, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("local")
    assert main(_args(tiny_model_dir, images, out)) == 0
    files = _outputs(out)
    assert len(files) == 3 * N_IMAGES
    return files


def test_ray_outputs_are_byte_identical_to_the_local_engine(ray_cluster, tiny_model_dir, images, reference, tmp_path):
    out = tmp_path / "ray"
    assert main(_args(tiny_model_dir, images, out, "--engine", "ray", "--actors", "2")) == 0
    assert _outputs(out) == reference


def test_a_killed_driver_rerun_completes_with_identical_outputs(
    ray_cluster, tiny_model_dir, images, reference, tmp_path
):
    out = tmp_path / "ray"
    cmd = [sys.executable, "-m", "diffuseg", *_args(tiny_model_dir, images, out, "--engine", "ray")]
    cmd += ["--address", ray_cluster]  # a second driver on the module's cluster
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    try:
        while len(list(out.glob("*.json"))) < 4:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no output within 120 s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = len(list(out.glob("*.json")))
    assert 4 <= done < N_IMAGES  # killed mid-run
    assert main(_args(tiny_model_dir, images, out, "--engine", "ray")) == 0
    assert _outputs(out) == reference
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_killed_worker_loses_no_image(ray_cluster, tiny_model_dir, images, reference, tmp_path, arm_file):
    out = tmp_path / "ray"
    arm_file.write_text("armed")  # the worker segmenting img05 dies (once)
    assert main(_args(tiny_model_dir, images, out, "--engine", "ray", "--limit", "8")) == 0
    assert not arm_file.exists()  # it did die
    assert _outputs(out) == {k: v for k, v in reference.items() if int(k[3:5]) < 8}
    assert not (out / "failures.jsonl").exists()


def test_an_image_that_always_kills_its_worker_fails_alone(
    ray_cluster, tiny_model_dir, images, reference, tmp_path, arm_file
):
    """Every worker that segments img05 dies: its batch (img04, img05 at batch size 2) is given
    up after MAX_ATTEMPTS starts and listed as failed; the other images are written, and the
    next run (nothing crashing now) retries the two."""
    from diffuseg.engine.ray_engine import MAX_ATTEMPTS

    out = tmp_path / "ray"
    arm_file.write_text("always")
    try:
        assert main(_args(tiny_model_dir, images, out, "--engine", "ray", "--limit", "8")) == 1
    finally:
        arm_file.unlink(missing_ok=True)
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert sorted(f["name"] for f in failures) == ["img04", "img05"]
    assert all(f"died {MAX_ATTEMPTS} times" in f["error"] for f in failures)
    first8 = {k: v for k, v in reference.items() if int(k[3:5]) < 8}
    assert _outputs(out) == {k: v for k, v in first8.items() if k[:5] not in ("img04", "img05")}
    assert main(_args(tiny_model_dir, images, out, "--engine", "ray", "--limit", "8")) == 0
    assert _outputs(out) == first8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_an_unreachable_address_fails_fast_and_clearly(tiny_model_dir, images, tmp_path, capsys, scheme):
    address = f"{scheme}127.0.0.1:{_free_port()}"
    t0 = time.monotonic()
    rc = main(_args(tiny_model_dir, images, tmp_path / "o", "--engine", "ray", "--address", address))
    assert rc == 2 and time.monotonic() - t0 < 10
    err = capsys.readouterr().err
    assert f"--address {address}: nothing answers" in err and "ray start --head" in err


def test_bad_actor_settings_are_usage_errors(tiny_model_dir, images, tmp_path, capsys):
    assert main(_args(tiny_model_dir, images, tmp_path / "o", "--engine", "ray", "--actors", "0")) == 2
    assert "--actors must be an int >= 1, got 0" in capsys.readouterr().err


def _eval(model, out, *extra):
    args = ["eval", "--dataset", "synthetic", "--model", str(model), "--size", "32", "--limit", "6"]
    return main([*args, "--batch-size", "2", "--no-progress", "--out", str(out), *NOISY, *extra])


def _records(out: Path) -> list[dict]:
    (path,) = out.glob("*.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    recs = sorted((r for r in lines if r.get("type") != "header"), key=lambda r: r["index"])
    return [{k: v for k, v in r.items() if k != "seconds"} for r in recs]


def test_eval_on_ray_stores_the_local_engines_records_and_report(ray_cluster, tiny_model_dir, tmp_path):
    assert _eval(tiny_model_dir, tmp_path / "local") == 0
    assert _eval(tiny_model_dir, tmp_path / "ray", "--engine", "ray", "--actors", "2") == 0
    assert len(_records(tmp_path / "ray")) == 6 and _records(tmp_path / "ray") == _records(tmp_path / "local")
    local, remote = (
        json.loads((tmp_path / d / "synthetic-val_diffseg_full.json").read_text()) for d in ("local", "ray")
    )
    assert remote["metrics"] == local["metrics"] and remote["dataset"] == local["dataset"]
