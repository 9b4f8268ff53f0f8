"""The web demo without a browser: controls from configs, the session (caching, errors, one
request at a time), the page's construction and the ``diffuseg demo`` flags."""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch
from PIL import Image

from diffuseg.cli import main
from diffuseg.demo.controls import CONTROL_KINDS, method_controls, settings_overrides
from diffuseg.demo.session import DemoInputError, DemoSession, methods_by_kind, open_upload
from diffuseg.methods import KINDS, get_method, list_methods

#: DiffSegmenter's prompt fits the tiny text encoder's 16 tokens only without the template words.
TINY = {"template": "{class}"}


@pytest.fixture
def session(tiny_backbone, tmp_path, one_thread):
    s = DemoSession(lambda: tiny_backbone, "tiny-sd1", work_dir=tmp_path / "work", max_pixels=100_000)
    assert s.load_model()
    return s


@pytest.mark.parametrize("name", list_methods())
def test_controls_cover_every_field_with_the_preset_defaults(name):
    spec = get_method(name)
    for family in (None, "toy"):
        config = spec.make_config(family)
        controls = method_controls(spec, family)
        assert [c.name for c in controls] == [f.name for f in dataclasses.fields(spec.config_cls)]
        for c in controls:
            assert c.kind in CONTROL_KINDS
            assert c.parse(c.default) == getattr(config, c.name), (name, family, c.name)
        # the controls' own defaults are no override: the preset stays the only default
        assert settings_overrides(controls, {c.name: c.default for c in controls}) == {}


def test_controls_parse_like_the_cli():
    by_name = {c.name: c for c in method_controls(get_method("diffseg"), "toy")}
    assert by_name["kl_thresholds"].kind == "text" and by_name["kl_thresholds"].parse("0.2, 0.3,0.4") == (0.2, 0.3, 0.4)
    assert by_name["image_size"].parse("none") is None and by_name["image_size"].parse("256") == 256
    assert by_name["num_anchors_per_side"].kind == "number" and by_name["num_anchors_per_side"].parse(8.0) == 8
    assert by_name["refine"].kind == "checkbox"
    assert by_name["label"].kind == "dropdown" and "classes" in by_name["label"].choices
    with pytest.raises(ValueError, match="kl_thresholds"):
        by_name["kl_thresholds"].parse("0.2,,x")
    with pytest.raises(ValueError, match="whole number"):
        by_name["num_anchors_per_side"].parse(2.5)
    overrides = settings_overrides(list(by_name.values()), {"kl_thresholds": "0.2,0.2,0.2", "refine": False})
    assert overrides == {"kl_thresholds": (0.2, 0.2, 0.2)}


def test_methods_grouped_by_kind():
    groups = methods_by_kind()
    assert list(groups) == [k for k in KINDS if k in groups]
    assert sorted(n for names in groups.values() for n in names) == list_methods()
    assert "diffseg" in groups["unsupervised"] and "diffsegmenter" in groups["open-vocabulary"]


def test_post_processing_change_reuses_the_pass(session, quadrant_image):
    first = session.segment(quadrant_image, "diffseg", {}, name="quad")
    assert first.model_pass and first.model_calls == 1
    assert first.overlay.size == quadrant_image.size == first.label_map.size
    assert len(first.legend) == first.segmentation.num_segments >= 1
    assert abs(sum(f for *_, f in first.legend) - 1.0) < 1e-6
    assert [p.name for p in first.files] == ["quad.labels.png", "quad.json"] and all(p.is_file() for p in first.files)
    again = session.segment(quadrant_image, "diffseg", {"kl_thresholds": "0.5,0.5,0.5"}, name="quad")
    assert not again.model_pass and again.model_calls == 1
    assert again.segmentation.config.kl_thresholds == (0.5, 0.5, 0.5)
    # a setting of the pass (the timestep) needs a new one; so does another image
    assert session.segment(quadrant_image, "diffseg", {"timestep": 200}).model_pass
    assert session.segment(quadrant_image.rotate(90), "diffseg", {"timestep": 200}).model_pass
    assert session.model_calls == 3


def test_pass_fields_are_the_fields_a_plan_reads():
    """A field is a pass field when the plan uses it in any way (stored, compared, tested for
    truth, in a branch) or changes with it; the others are post-processing."""
    from types import SimpleNamespace

    from diffuseg.demo.controls import pass_fields

    @dataclasses.dataclass(frozen=True)
    class Config:
        size: int = 64
        flag: bool = True
        mode: str = "a"
        threshold: float = 0.5

    def plan(config, query, backbone, resources):
        out = {"size": config.size}
        if config.flag:
            out["mode"] = "x" if config.mode == "b" else "y"
        return out

    spec = SimpleNamespace(plan=plan)
    assert pass_fields(spec, Config(), None, None, {}) == {"size", "flag", "mode"}
    assert pass_fields(spec, Config(flag=False), None, None, {}) == {"size", "flag"}  # mode unread then

    def broken(config, query, backbone, resources):
        raise ValueError("needs a backbone")

    assert pass_fields(SimpleNamespace(plan=broken), Config(), None, None, {}) is None


@pytest.mark.parametrize(
    "method, classes, post, pass_setting",
    [
        ("diffseg", "", ("kl_thresholds", "0.5,0.5,0.5"), ("timestep", 200)),
        ("maskdiffusion", "red, blue", ("background_score", 0.9), ("timestep", 100)),
        ("slic", "", ("n_segments", 20), None),
    ],
)
def test_the_page_tells_pass_settings_from_post_processing_truly(
    session, quadrant_image, method, classes, post, pass_setting
):
    """What `DemoSession.pass_fields` calls post-processing re-segments without a pass; what
    it calls a pass setting runs the model again (the page groups the controls so)."""
    fields = session.pass_fields(method)
    assert post[0] not in fields
    base = {"template": "{class}"} if method == "maskdiffusion" else {}
    session.segment(quadrant_image, method, base, classes=classes)
    calls = session.model_calls
    assert not session.segment(quadrant_image, method, {**base, post[0]: post[1]}, classes=classes).model_pass
    if pass_setting is None:
        assert not fields and session.model_calls == calls == 0
        return
    assert pass_setting[0] in fields
    assert session.segment(
        quadrant_image, method, {**base, pass_setting[0]: pass_setting[1]}, classes=classes
    ).model_pass


def test_open_vocabulary_names_and_empty_classes(session, quadrant_image):
    with pytest.raises(DemoInputError, match="Classes box"):
        session.segment(quadrant_image, "diffsegmenter", TINY, classes="  ")
    result = session.segment(quadrant_image, "diffsegmenter", TINY, classes="red, green|lime, blue")
    names = {name for _, name, _, _ in result.legend}
    assert names and names <= {"red", "green", "blue"}
    with pytest.raises(DemoInputError, match="classes"):
        session.segment(quadrant_image, "diffsegmenter", TINY, classes="red, red")


def test_class_box_never_opens_a_file(session, quadrant_image, tmp_path, monkeypatch):
    import diffuseg.labeling.vocabulary as vocabulary

    (tmp_path / "red").write_text("secret\n")
    monkeypatch.chdir(tmp_path)

    def refuse(path):
        raise AssertionError(f"the demo opened {path}")

    monkeypatch.setattr(vocabulary, "_file_classes", refuse)
    result = session.segment(quadrant_image, "diffsegmenter", TINY, classes="red")  # a class name, not the file
    assert {name for _, name, _, _ in result.legend} == {"red"}


def test_bad_settings_and_methods_are_messages(session, quadrant_image):
    with pytest.raises(DemoInputError, match="'kl thresholds'"):  # the control's label
        session.segment(quadrant_image, "diffseg", {"kl_thresholds": "-1,1,1"})
    with pytest.raises(DemoInputError, match="unknown method"):
        session.segment(quadrant_image, "nope", {})
    with pytest.raises(DemoInputError, match="outside"):
        session.inspect(quadrant_image, "diffseg", (64, 0))
    with pytest.raises(DemoInputError, match="pixel view"):
        session.inspect(quadrant_image, "slic", (0, 0))


@pytest.mark.parametrize("method", ["diffseg", "diffcut"])
def test_inspect_reuses_the_pass_of_the_same_method(session, quadrant_image, method):
    settings = {"image_size": "64"}  # DiffCut's SD-1.x preset is 1024 px
    session.segment(quadrant_image, method, settings)
    calls = session.model_calls
    picture = session.inspect(quadrant_image, method, (10, 50), settings)
    assert picture.width == 2 * picture.height and session.model_calls == calls


def test_uploads_are_checked(tmp_path):
    text = tmp_path / "notes.png"  # a misleading name does not help
    text.write_text("not an image")
    with pytest.raises(DemoInputError, match="not an image"):
        open_upload(text, 1000)
    big = tmp_path / "big.png"
    Image.new("RGB", (40, 30)).save(big)
    with pytest.raises(DemoInputError, match=r"40x30 = 1,200 pixels.*at most 1,000"):
        open_upload(big, 1000)
    assert open_upload(big, 1200).size == (40, 30)


def test_model_load_error_is_kept_for_the_page(tmp_path, quadrant_image):
    def broken():
        raise OSError("no such model: /nowhere")

    s = DemoSession(broken, "/nowhere", work_dir=tmp_path)
    assert not s.load_model() and "no such model" in s.load_error
    with pytest.raises(DemoInputError, match="failed to load"):
        s.segment(quadrant_image, "diffseg", {})
    assert s.segment(quadrant_image, "slic", {}).segmentation.num_segments >= 1  # pixel methods still work


def test_one_request_at_a_time(session, quadrant_image):
    images = [quadrant_image.rotate(a) for a in (0, 90, 180, 270)]
    errors = []

    def run(image):
        try:
            session.segment(image, "diffseg", {})
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(im,)) for im in images]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and session.max_active == 1 and session.model_calls == 4


def test_page_builds_with_every_method(session):
    gr = pytest.importorskip("gradio")
    from diffuseg.demo.app import build_app
    from diffuseg.demo.examples import bundled_examples

    examples = bundled_examples()
    assert "synthetic scene 0" in examples and examples["synthetic scene 0"].classes
    app = build_app(session, examples)
    assert isinstance(app, gr.Blocks)
    ids = {getattr(block, "elem_id", None) for block in app.blocks.values()}
    for name in list_methods():
        assert {f"{name}-{c.name}" for c in session.controls(name)} <= ids


def test_demo_cli_flags(capsys):
    assert main(["demo", "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err
    assert main(["demo", "--max-pixels", "0"]) == 2
    assert "--max-pixels" in capsys.readouterr().err
    assert main(["demo", "--device", "tpu"]) == 2


def test_demo_cli_serves_despite_a_broken_model_and_warns_off_localhost(monkeypatch, tmp_path, caplog, capsys):
    pytest.importorskip("gradio")
    import diffuseg.demo.app as app_module

    served = {}

    def fake_serve(app, session, host, port, max_file_bytes, block=True):
        served.update(app=app, session=session, host=host, port=port, max_file_bytes=max_file_bytes)

    monkeypatch.setattr(app_module, "serve", fake_serve)
    missing = tmp_path / "no-model"
    with caplog.at_level("WARNING"):
        code = main(["demo", "--model", str(missing), "--host", "0.0.0.0", "--port", "0", "--max-upload-mb", "2"])
    assert code == 0
    assert "anyone who can reach this port" in caplog.text
    session = served["session"]
    assert session.backbone is None and str(missing) in session.load_error
    assert "the page shows this" in capsys.readouterr().err
    assert served["host"] == "0.0.0.0" and 0 < served["port"] < 65536 and served["max_file_bytes"] == 2_000_000


# ------------------------------------------------------------------ several methods
def test_several_methods_share_a_pass_and_equal_each_alone(session, quadrant_image):
    settings = {
        "diffseg": {"timestep": 300, "image_size": 64},
        "diffcut": {"timestep": 300, "image_size": 64, "add_noise": False},
        "slic": {},
    }
    results = session.segment_many(quadrant_image, list(settings), settings, name="quad")
    assert list(results) == list(settings)
    assert session.model_calls == 1  # diffseg and diffcut agree; slic runs no model
    assert all(r.model_pass for r in results.values())
    for m, result in results.items():
        alone = session.segment(quadrant_image, m, settings[m], name="quad")
        assert torch.equal(alone.segmentation.labels, result.segmentation.labels), m
        assert result.overlay.size == quadrant_image.size
        assert [p.name for p in result.files] == [f"quad.{m}.labels.png", f"quad.{m}.json"]


def test_several_methods_bad_lists_and_settings_are_messages(session, quadrant_image):
    with pytest.raises(DemoInputError, match="different methods"):
        session.segment_many(quadrant_image, ["diffseg", "diffseg"])
    with pytest.raises(DemoInputError, match="different methods"):
        session.segment_many(quadrant_image, [])
    with pytest.raises(DemoInputError, match="open-vocabulary"):
        session.segment_many(quadrant_image, ["diffseg", "diffsegmenter"])  # no class names
    assert session.active == 0 and session.model_calls == 0  # refused before any work


def test_page_offers_other_methods_beside_the_main_one(session):
    pytest.importorskip("gradio")
    from diffuseg.demo.app import build_app

    app = build_app(session, {})
    ids = {getattr(block, "elem_id", None) for block in app.blocks.values()}
    assert {"also", "others"} <= ids
