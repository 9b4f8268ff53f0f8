"""Issue 23 (reliability), the front ends: bad input to ``diffuseg demo``, ``diffuseg train`` and
``diffuseg inspect`` is a clear error naming the flag (exit 2, no traceback), said before the
model loads where it can be; a failed demo request shows its message on the page."""

from __future__ import annotations

import socket

import pytest
import torch

from diffuseg.cli import main


def _never(*args, **kwargs):
    raise AssertionError("the model was loaded although the flags were bad")


# --------------------------------------------------------------------------- inspect


def test_inspect_takes_a_negative_point_and_says_it_lies_off_the_image(photo, tmp_path, monkeypatch, capsys):
    import diffuseg.commands._options as options

    monkeypatch.setattr(options, "load_backbone", _never)
    base = ["inspect", photo, "--model", "toy", "--out", str(tmp_path / "view.png")]
    for point in (["--point", "-1,5"], ["--point=-1,5"], ["--point", "5,-3"], ["--point", "32,0"], ["--point", "0,48"]):
        assert main([*base, *point]) == 2, point
        err = capsys.readouterr().err
        assert "expected one argument" not in err
        assert "--point" in err and "outside the image, which is 32 pixels high and 48 wide" in err, err
        assert "y must be in 0..31 and x in 0..47" in err
    assert not (tmp_path / "view.png").exists()


# --------------------------------------------------------------------------- demo


@pytest.mark.parametrize("value", ["nan", "inf", "NaN"])
def test_demo_refuses_a_size_that_is_no_number_of_megabytes(value, monkeypatch, capsys):
    import diffuseg.commands.demo as demo

    monkeypatch.setattr(demo, "make_session", _never)
    assert main(["demo", "--max-upload-mb", value, "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "--max-upload-mb" in err and "finite" in err and "Traceback" not in err


@pytest.fixture
def busy_port():
    """A port something already listens on (127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_demo_says_a_busy_port_in_flags_before_the_model_loads(busy_port, monkeypatch, capsys):
    pytest.importorskip("gradio")
    import diffuseg.commands.demo as demo

    monkeypatch.setattr(demo, "make_session", _never)
    assert main(["demo", "--port", str(busy_port)]) == 2
    err = capsys.readouterr().err
    assert f"--port {busy_port} is already in use" in err and "--port 0" in err
    assert "GRADIO_SERVER_PORT" not in err


@pytest.mark.parametrize("host", ["192.0.2.1", "", "host name"])
def test_demo_says_a_host_that_is_not_this_machine_in_flags(host, monkeypatch, capsys):
    """192.0.2.1 is TEST-NET-1: never an address of this machine."""
    pytest.importorskip("gradio")
    import diffuseg.commands.demo as demo

    monkeypatch.setattr(demo, "make_session", _never)
    assert main(["demo", "--host", host, "--port", "0"]) == 2
    assert "--host" in capsys.readouterr().err


def test_demo_rewords_gradios_port_error(monkeypatch, tmp_path, capsys):
    """The port is taken between the check and the server's start: Gradio's message (which
    advises its environment variable) becomes one that names --port."""
    pytest.importorskip("gradio")
    import diffuseg.demo.app as app_module

    def taken(*args, **kwargs):
        raise OSError(
            "Cannot find empty port in range: 7861-7861. You can specify a different port by setting the "
            "GRADIO_SERVER_PORT environment variable or passing the `server_port` parameter to `launch()`."
        )

    monkeypatch.setattr(app_module, "serve", taken)
    assert main(["demo", "--model", str(tmp_path / "no-model"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "--port" in err and "in use" in err and "GRADIO_SERVER_PORT" not in err


def _handler(app, name):
    """The page's handler `name` and the values its inputs start with."""
    fn = next(f for f in app.fns.values() if f.name == name)
    return fn.fn, {c: c.value for c in fn.inputs}


def _set(data, **by_id):
    for component in data:
        key = getattr(component, "elem_id", None) or type(component).__name__
        if key in by_id:
            data[component] = by_id[key]


@pytest.fixture
def page(tmp_path, one_thread):
    pytest.importorskip("gradio")
    from diffuseg.demo.app import build_app
    from diffuseg.demo.session import DemoSession

    session = DemoSession(lambda: None, "none", work_dir=tmp_path / "work")
    session.load_model()
    return session, build_app(session, {})


def test_a_failed_segmentation_shows_its_message_on_the_page(page, quadrant_image, monkeypatch):
    session, app = page

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(session, "_save", disk_full)
    on_segment, data = _handler(app, "on_segment")
    _set(data, State=(quadrant_image, "quad"), method="slic", classes="")
    status = on_segment(data, progress=lambda *a, **k: None)[0]
    assert 'class="demo-error"' in status
    assert "slic segmentation failed: OSError: [Errno 28] No space left on device" in status

    def too_many(*args, **kwargs):
        raise ValueError("an 8-bit label PNG holds at most 256 segments, got 300.")

    monkeypatch.setattr(session, "_save", too_many)
    status = on_segment(data, progress=lambda *a, **k: None)[0]
    assert "slic segmentation failed: an 8-bit label PNG holds at most 256 segments, got 300." in status


def test_a_failed_pixel_view_shows_its_message_on_the_page(page, quadrant_image, monkeypatch):
    import gradio as gr

    session, app = page

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(session, "inspect", out_of_memory)
    on_select, data = _handler(app, "on_select")
    states = [c for c in data if type(c).__name__ == "State"]
    data[states[0]], data[states[1]] = (quadrant_image, "quad"), 1  # (image, name), display scale
    status = on_select(data, gr.SelectData(None, {"index": [5, 7], "value": None}))[1]
    assert "failed: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB" in status


# --------------------------------------------------------------------------- train proving-ground

PG = ["train", "proving-ground", "--threads", "1"]


def test_proving_ground_refuses_bad_folders_before_any_work(tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine\n")
    cases = [
        (["--out", str(a_file)], f"--out {a_file} is a file"),
        (["--out", str(a_file / "run")], f"cannot be created: {a_file} is a file"),
        (["--out", ""], "--out must name a folder"),
        (["--out", str(tmp_path / "new"), "--resume"], "holds no run to continue"),
        (["--out", str(tmp_path / "new"), "--init-from", str(tmp_path / "nowhere")], "--init-from"),
        (["--out", str(tmp_path / "new"), "--export", str(tmp_path)], "--export"),  # the export would replace it
        (["--out", str(tmp_path / "new"), "--lr", "nan"], "--lr"),
        (["--out", str(tmp_path / "new"), "--ema-decay", "inf"], "--ema-decay"),
    ]
    for flags, words in cases:
        assert main([*PG, *flags]) == 2, flags
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err and "Errno" not in err, (flags, err)
    assert a_file.read_text() == "mine\n" and not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_proving_ground_resume_below_the_run_step_is_refused(tmp_path, capsys):
    """--resume --steps N with the run's checkpoint past N: nothing is rewritten (the stored
    config kept its steps) and the message says where the run is."""
    from diffuseg.synthetic.checkpoint import CHECKPOINT_NAME

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"steps": 8}')
    torch.save({"step": 5}, run / CHECKPOINT_NAME)
    assert main([*PG, "--out", str(run), "--resume", "--steps", "3"]) == 2
    err = capsys.readouterr().err
    assert "--steps 3" in err and "already at step 5" in err
    assert (run / "config.json").read_text() == '{"steps": 8}'


# --------------------------------------------------------------------------- train segdiffusion


def _seg(tiny_model_dir, out):
    return ["train", "segdiffusion", "--base", str(tiny_model_dir), "--num-scenes", "3", "--batch-size", "2",
            "--size", "32", "--template", "{class}", "--threads", "1", "--no-progress", "--out", str(out)]  # fmt: skip


def test_segdiffusion_out_that_is_a_file_is_a_clear_error(tiny_model_dir, tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine\n")
    for out, words in ((a_file, "is a file"), (a_file / "run", f"cannot be created: {a_file} is a file")):
        assert main([*_seg(tiny_model_dir, out), "--steps", "1"]) == 2
        err = capsys.readouterr().err
        assert words in err and "Errno" not in err, err
    assert a_file.read_text() == "mine\n"


def test_segdiffusion_resume_below_the_run_step_says_where_the_run_is(tiny_model_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*_seg(tiny_model_dir, run), "--steps", "2"]) == 0
    capsys.readouterr()
    assert main([*_seg(tiny_model_dir, run), "--steps", "1", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "trained to step -" not in err and "below step 2, where the run" in err
    assert (tmp_path / "run" / "log.jsonl").read_text().count("\n") == 2  # the run is untouched


def test_segdiffusion_check_out_names_out_resume_and_steps(tiny_backbone, tmp_path):
    from diffuseg.segdiffusion.train import SegTrainConfig, check_out, train

    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine\n")
    with pytest.raises(ValueError, match="`out` .* is a file"):
        check_out(a_file)
    with pytest.raises(ValueError, match="`out` must name a folder"):
        check_out("")
    with pytest.raises(ValueError, match="holds no run to resume.*`resume=True`"):
        check_out(tmp_path / "new", resume=True)
    assert check_out(tmp_path / "new") is None and not (tmp_path / "new").exists()
    dataset = _blocks()
    config = SegTrainConfig(steps=2, batch_size=1, size=32, template="{class}", checkpoint_every=2)
    with pytest.raises(ValueError, match="`out` must name a folder"):
        train(tiny_backbone, dataset, config, "")  # not the working folder
    train(tiny_backbone, dataset, config, tmp_path / "run")
    assert check_out(tmp_path / "run", resume=True, steps=3) == 2
    with pytest.raises(FileExistsError, match="`resume=True`"):
        check_out(tmp_path / "run")
    with pytest.raises(ValueError, match="`steps` 1 is below step 2"):
        train(tiny_backbone, dataset, SegTrainConfig(**{**config.__dict__, "steps": 1}), tmp_path / "run", resume=True)
    assert train(tiny_backbone, dataset, config, tmp_path / "run", resume=True) == []  # at step 2 already
    (tmp_path / "run" / "trainer.pt").unlink()
    with pytest.raises(ValueError, match="cannot be resumed"):
        check_out(tmp_path / "run", resume=True)


def _blocks():
    import numpy as np
    from PIL import Image

    from diffuseg.datasets import ArrayDataset
    from diffuseg.types import Sample

    label = np.zeros((32, 32), np.int64)
    label[8:24, 8:24] = 1
    image = np.full((32, 32, 3), 40, np.uint8)
    image[8:24, 8:24] = (220, 60, 60)
    return ArrayDataset("blocks", ["a", "b"], [Sample("0", Image.fromarray(image), label)])


def test_segdiffusion_cli_speaks_in_flags_and_checks_before_the_model_loads(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    from diffuseg.backbone import DiffusionBackbone

    run = tmp_path / "run"
    assert main([*_seg(tiny_model_dir, run), "--steps", "2"]) == 0
    capsys.readouterr()
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine\n")
    with monkeypatch.context() as m:
        m.setattr(DiffusionBackbone, "from_pretrained", _never)
        cases = [
            (_seg(tiny_model_dir, tmp_path / "new") + ["--val-scenes", "0", "--validate-every", "1"],
             "--validate-every 1 validates on --val-scenes held-out scenes, and --val-scenes 0 leaves none"),
            (_seg(tiny_model_dir, run) + ["--steps", "3"], "pass --resume to continue it or choose another --out"),
            (_seg(tiny_model_dir, run) + ["--steps", "1", "--resume"], "--steps 1 is below step 2, where the run"),
            (_seg(tiny_model_dir, a_file) + ["--steps", "1"], f"--out {a_file} is a file"),
            (_seg(tiny_model_dir, tmp_path / "new") + ["--resume"], "holds no run to resume"),
        ]  # fmt: skip
        for argv, words in cases:
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert words in err and "`" not in err and "resume=True" not in err, (argv, err)
    assert not (tmp_path / "new").exists()
    assert main([*_seg(tiny_model_dir, run), "--steps", "2", "--resume"]) == 0  # the run is where it was asked to be
    err = capsys.readouterr().err
    assert "already at step 2 = --steps" in err and "trained to step -" not in err
