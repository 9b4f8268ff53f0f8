"""The ``clip`` and ``caption-clip`` filters: a tiny CLIP built from configs, saved to a temp dir
and loaded through the same code as a user's weights; the keep rules on known scores."""

from __future__ import annotations

import json

import pytest
import torch

from diffuseg.labeling.filters import ClipFilter, make_filter

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from diffuseg.synthetic.tokenizer import build_clip_tokenizer

    tok = build_clip_tokenizer()
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, **ids),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8,
    )  # fmt: skip
    torch.manual_seed(0)
    model = CLIPModel(config)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tok,
    )
    path = tmp_path_factory.mktemp("clip")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def test_load_clip_from_a_folder_scores_images_and_texts(tiny_clip_dir, quadrant_image):
    from diffuseg.labeling.clip import ClipScorer, load_clip

    scorer = load_clip(str(tiny_clip_dir))
    assert isinstance(scorer, ClipScorer)
    sims = scorer.image_similarity(quadrant_image, ["cat", "traffic light", "sky"])
    assert sims.shape == (3,) and bool(((sims >= -1) & (sims <= 1)).all())
    text = scorer.text_similarity("a cat on a sofa", ["cat", "sofa"])
    assert text.shape == (2,)
    torch.testing.assert_close(scorer.text_similarity("cat", ["cat"]), torch.ones(1), atol=1e-5, rtol=0)


def test_load_clip_errors_name_the_model(tmp_path):
    from diffuseg.backbone.loading import ModelNotFoundError
    from diffuseg.labeling.clip import NotAClipModelError, load_clip

    with pytest.raises(ModelNotFoundError, match=r"(?s)CLIP model .* not available.*Give `clip`"):
        load_clip(str(tmp_path / "nope"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "blip"}))
    with pytest.raises(NotAClipModelError, match="model_type 'blip', not 'clip'"):
        load_clip(str(tmp_path))


class _Scores:
    """A stand-in scorer with known similarities per name."""

    def __init__(self, image: dict[str, float], text: dict[str, float] | None = None):
        self.image, self.text = image, text or {}

    def image_similarity(self, image, names):
        return torch.tensor([self.image[n] for n in names])

    def text_similarity(self, text, names):
        return torch.tensor([self.text.get(n, 0.0) for n in names])


CLASSES = (("cat", "kitty"), ("dog",), ("background",), ("sofa",))


def test_clip_keeps_the_classes_within_the_ratio_of_the_best():
    flt = ClipFilter(_Scores({"cat": 0.25, "kitty": 0.30, "dog": 0.292, "sofa": 0.20}))
    out = flt(None, None, CLASSES)
    # best 0.30 (cat's synonym); 0.97 x 0.30 = 0.291: dog stays, sofa goes; background always
    assert out.kept == (("cat", "kitty"), ("dog",), ("background",))
    assert out.scores == pytest.approx({"cat": 0.30, "dog": 0.292, "sofa": 0.20})
    assert not out.fell_back and out.filter == "clip"


def test_caption_clip_adds_the_classes_the_caption_names():
    scores = _Scores({"cat": 0.3, "kitty": 0.1, "dog": 0.1, "sofa": 0.1}, text={"sofa": 0.85, "dog": 0.5})
    flt = ClipFilter(scores, use_caption=True)
    out = flt(None, None, CLASSES, caption="a cat on a sofa")
    assert [c[0] for c in out.kept] == ["cat", "background", "sofa"]
    with pytest.raises(ValueError, match="caption-clip' needs a caption"):
        flt(None, None, CLASSES)
    prefixes = []
    with_captioner = ClipFilter(scores, use_caption=True, captioner=lambda im, p: prefixes.append(p) or "a sofa")
    assert [c[0] for c in with_captioner(None, None, CLASSES).kept] == ["cat", "background", "sofa"]
    assert prefixes == [""]  # an unconditional caption


def test_clip_filter_through_the_cli(tiny_clip_dir, tiny_model_dir, photo, tmp_path, capsys):
    from diffuseg.cli import main

    base = ["segment", photo, "--model", str(tiny_model_dir), "--method", "diffsegmenter", "--template", "{class}",
            "--classes", "x,y",
            "--size", "32", "--seed", "0", "--no-progress"]  # fmt: skip
    assert main([*base, "--filter", "clip", "--out", str(tmp_path / "a")]) == 2
    assert "--filter clip needs --clip" in capsys.readouterr().err
    assert main([*base, "--filter", "caption-clip", "--clip", str(tiny_clip_dir), "--out", str(tmp_path / "b")]) == 2
    assert "--filter caption-clip needs a caption" in capsys.readouterr().err
    assert main([*base, "--filter", "clip", "--clip", str(tiny_clip_dir), "--out", str(tmp_path / "c")]) == 0
    record = json.loads((tmp_path / "c" / "photo.json").read_text())
    assert record["meta"]["class_filter"]["filter"] == "clip"
    assert set(record["meta"]["class_filter"]["scores"]) == {"x", "y"}
    assert make_filter("none") is None


def test_diffseg_and_diffcut_name_segments_with_dense_clip_features(tiny_clip_dir, tiny_backbone, quadrant_image):
    from diffuseg.labeling.clip import load_clip
    from diffuseg.plan import Query
    from diffuseg.segmenter import Segmenter

    clip = load_clip(str(tiny_clip_dir))
    dense = clip.dense_features(quadrant_image)
    assert dense.shape == (8, 4, 4)  # projection width, 32 px / 8 px patches
    torch.testing.assert_close(dense.norm(dim=0), torch.ones(4, 4))
    query = Query(image=quadrant_image, classes="x, y|z, background")
    for method in ("diffseg", "diffcut"):
        seg = Segmenter(tiny_backbone, method, label="clip", image_size=32, resources={"clip": clip})
        out = seg(query, torch.Generator().manual_seed(0))
        assert out.names == ["x", "y", "background"] and set(out.labels.unique().tolist()) <= {0, 1}
        assert seg.model_calls == 1
    with pytest.raises(ValueError, match="'clip' names segments with a CLIP model.*--clip"):
        Segmenter(tiny_backbone, "diffseg", label="clip", image_size=32)(query, torch.Generator().manual_seed(0))


def test_cli_label_clip(tiny_clip_dir, tiny_model_dir, photo, tmp_path, capsys):
    from diffuseg.cli import main

    base = ["segment", photo, "--model", str(tiny_model_dir), "--method", "diffcut", "--size", "32", "--no-progress"]
    argv = [*base, "--classes", "x,y", "--label", "clip", "--clip", str(tiny_clip_dir)]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    record = json.loads((tmp_path / "a" / "photo.json").read_text())
    assert {s["name"] for s in record["segments"]} <= {"x", "y"} and record["config"]["label"] == "clip"
    assert main([*base, "--label", "clip", "--clip", str(tiny_clip_dir), "--out", str(tmp_path / "b")]) == 2
    assert "--label clip names the segments from --classes" in capsys.readouterr().err
