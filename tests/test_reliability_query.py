"""What a caller asks for, checked where it is given (issue 23, query / classes / seed).

Bad class lists, seeds, captions and images are refused with a `ValueError` naming the argument
(the CLI: the flag, exit 2, before the model loads), never a traceback from deep inside or a
silently wrong result.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffuseg.cli import main
from diffuseg.imageio import as_pil, load_image
from diffuseg.plan import Query


# ------------------------------------------------------------------ images: NaN and infinities
@pytest.mark.parametrize(
    "image",
    [
        np.full((16, 16, 3), np.nan, dtype=np.float32),
        np.where(np.eye(16, dtype=bool)[..., None], np.inf, 0.5).astype(np.float64),
        np.full((16, 16), -np.inf, dtype=np.float16),
        torch.full((3, 16, 16), float("nan")),
        torch.full((1, 16, 16), float("inf"), dtype=torch.bfloat16),
    ],
    ids=["all-nan-array", "inf-diagonal-array", "minus-inf-half-array", "nan-tensor", "inf-bf16-tensor"],
)
def test_non_finite_pixels_are_refused_naming_image(image):
    with pytest.raises(ValueError, match=r"`image` has [\d,]+ NaN or infinite value"):
        as_pil(image)


def test_one_nan_pixel_is_counted():
    image = np.full((8, 8, 3), 0.5, dtype=np.float32)
    image[2, 3, 1] = np.nan
    with pytest.raises(ValueError, match=r"`image` has 1 NaN or infinite value\(s\) of 192"):
        as_pil(image)


def test_a_float_image_file_with_nan_is_refused(tmp_path):
    pixels = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    pixels[4, 4] = np.nan
    Image.fromarray(pixels, mode="F").save(tmp_path / "depth.tiff")
    with pytest.raises(ValueError, match="`image` has 1 NaN or infinite"):
        load_image(tmp_path / "depth.tiff")


def test_an_integer_tensor_is_refused_not_read_as_white():
    # a uint8 tensor 0..255 was clamped to [0, 1]: every pixel above 0 became white
    with pytest.raises(ValueError, match=r"must be a float tensor in \[0, 1\], got torch.uint8"):
        as_pil(torch.full((3, 8, 8), 128, dtype=torch.uint8))


def test_finite_float_images_still_convert():
    assert as_pil(np.full((8, 8, 3), 0.5, dtype=np.float32)).getpixel((0, 0)) == (128, 128, 128)
    assert as_pil(torch.full((3, 8, 8), 1.0, dtype=torch.float16)).getpixel((0, 0)) == (255, 255, 255)


def test_the_segmenter_refuses_a_nan_image_naming_image():
    from diffuseg import Segmenter

    seg = Segmenter(None, "kmeans-color")
    with pytest.raises(ValueError, match="`image` has 768 NaN or infinite"):
        seg(np.full((16, 16, 3), np.nan, dtype=np.float32))
    out = seg.segment_batch([torch.full((3, 16, 16), float("inf"))], return_errors=True)
    assert isinstance(out[0], ValueError) and "`image`" in str(out[0])


# ------------------------------------------------------------------ the CLI: --classes, --seed, --caption
def _cli(tmp_path, command, *args):
    """`diffuseg COMMAND` with a model that does not exist: an error about the flags (exit 2)
    rather than about the model shows the flags were checked before the model loads."""
    missing = str(tmp_path / "no-such-model")
    return main([command, *args, "--model", missing, "--out", str(tmp_path / "out"), "--no-progress"])


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    return str(path)


def _inputs(command, image):
    return [image] if command == "segment" else [str(Path(image).parent)]


@pytest.mark.parametrize("command", ["segment", "batch"])
@pytest.mark.parametrize(
    "value, why",
    [
        ("myclasses.txt", "it ends in '.txt'"),
        ("lists/voc.names", "it ends in '.names'"),
        ("classes.JSON", "it ends in '.json'"),
        ("./nosuch", "it holds the path separator '/'"),
        ("tv/monitor", "it holds the path separator '/'"),
    ],
)
def test_classes_that_read_as_a_missing_file_are_an_error_naming_it(tmp_path, image, capsys, command, value, why):
    # before: one class named after the path, silently ("myclasses.txt" looked for in the image)
    assert _cli(tmp_path, command, *_inputs(command, image), "--method", "diffsegmenter", "--classes", value) == 2
    err = capsys.readouterr().err
    assert f"--classes {value!r} reads as a file path ({why}) but no such file exists" in err
    assert "give an existing class file (one class per line)" in err and "no-such-model" not in err
    assert ("a class name with a '/' goes among other classes" in err) == ("separator" in why)


def test_classes_naming_a_directory_are_an_error(tmp_path, image, capsys):
    folder = tmp_path / "lists"
    folder.mkdir()
    for value in (str(folder), str(folder) + "/"):
        assert _cli(tmp_path, "segment", image, "--method", "diffsegmenter", "--classes", value) == 2
        assert f"--classes {value!r} reads as a file path" in (err := capsys.readouterr().err)
        assert "it is a directory, not a class file" in err


def test_a_class_file_that_is_not_text_is_an_error_naming_it(tmp_path, image, capsys):
    assert _cli(tmp_path, "segment", image, "--method", "diffsegmenter", "--classes", image) == 2
    err = capsys.readouterr().err
    assert f"--classes names the class file {image!r}, which cannot be read: it is not UTF-8 text" in err
    assert "Traceback" not in err


def test_a_class_file_line_with_a_comma_is_an_error(tmp_path, image, capsys):
    # before: one class named "cat, dog"
    path = tmp_path / "mine.txt"
    path.write_text("cat, dog\nsofa\n", encoding="utf-8")
    assert _cli(tmp_path, "segment", image, "--method", "diffsegmenter", "--classes", str(path)) == 2
    err = capsys.readouterr().err
    assert f"class file {str(path)!r}: --classes has the class name 'cat, dog'; ',' separates classes" in err


@pytest.mark.parametrize(
    "value, message",
    [
        ("", "--classes is empty ('')"),
        (",,", "--classes is empty (',,')"),
        ("dataset:nosuch", "--classes names the unknown dataset 'nosuch'; allowed: ["),
    ],
)
def test_empty_classes_and_unknown_datasets_stay_flag_errors(tmp_path, image, capsys, value, message):
    assert _cli(tmp_path, "segment", image, "--method", "diffsegmenter", "--classes", value) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("caption", ["", "   "])
def test_an_empty_caption_is_an_error(tmp_path, image, capsys, caption):
    # before: taken as no caption (diffsegmenter) or ignored silently (diffseg)
    for method in ("diffsegmenter", "diffseg"):
        classes = ["--classes", "cat"] if method == "diffsegmenter" else []
        assert _cli(tmp_path, "segment", image, "--method", method, *classes, "--caption", caption) == 2
        assert f"--caption is empty ({caption!r}); give text or leave the caption out." in capsys.readouterr().err


@pytest.mark.parametrize("seed", ["18446744073709551616", "-1", str(-(2**63) - 1)])
@pytest.mark.parametrize("command", ["segment", "batch", "eval", "inspect", "demo"])
def test_a_seed_outside_64_bits_is_a_flag_error(tmp_path, image, capsys, monkeypatch, command, seed):
    monkeypatch.setattr("diffuseg.commands.demo.run", lambda args: 0)  # never serve the demo here
    # before: eval raised a traceback ("Overflow when unpacking long long"), inspect printed that
    # text after loading the model, segment and batch took 2**64 (a seed torch cannot hold)
    args = {
        "segment": [image],
        "batch": [str(Path(image).parent)],
        "eval": ["--dataset", "synthetic", "--limit", "1"],
        "inspect": [image, "--point", "1,1"],
        "demo": [],
    }[command]
    assert main([command, *args, "--model", str(tmp_path / "no-such-model"), "--seed", seed]) == 2
    err = capsys.readouterr().err
    assert f"error: argument --seed: must be an int in [0, 2**64), got {seed}." in err
    assert "Traceback" not in err


def test_a_seed_that_is_not_a_number_keeps_argparse_wording(tmp_path, image, capsys):
    assert main(["segment", image, "--seed", "abc"]) == 2
    assert "argument --seed: invalid int value: 'abc'" in capsys.readouterr().err


def test_the_largest_seed_runs(tiny_model_dir, tmp_path, image):
    largest = ["--model", str(tiny_model_dir), "--size", "32", "--seed", str(2**64 - 1)]
    assert main(["segment", image, *largest, "--no-progress", "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "photo.json").exists()
    # inspect seeds its one generator with it (torch.Generator.manual_seed takes up to 2**64 - 1)
    assert main(["inspect", image, "--point", "1,1", *largest, "--out", str(tmp_path / "view.png")]) == 0


# ------------------------------------------------------------------ the library: Query and Segmenter arguments
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"classes": 123}, r"`classes` must be None, a string .* got 123 \(int\)"),
        ({"classes": b"cat"}, r"`classes` must be None, a string .* got b'cat' \(bytes\)"),
        ({"classes": {"cat", "dog"}}, r"`classes` must be None, .*the order matters.* \(set\)"),
        ({"classes": {"cat": "kitty"}}, r"`classes` must be None, .* \(dict\)"),
        ({"classes": ["a", 3]}, r"`classes` has 3 \(int\) as a class"),
        ({"classes": [("a", 3)]}, r"`classes` has 3 \(int\) as a name of the class \('a', 3\); names must be strings"),
        ({"classes": [("a", None)]}, r"`classes` has None \(NoneType\) as a name"),
        ({"classes": [["a", ["b"]]]}, r"`classes` has \['b'\] \(list\) as a name"),
        ({"classes": ["cat,dog"]}, r"`classes` has the class name 'cat,dog'; ',' separates classes"),
        ({"classes": [("tv|monitor", "tv")]}, r"`classes` has the name 'tv\|monitor' in the class"),
        ({"caption": 42}, r"`caption` must be a string or None, got 42 \(int\)"),
        ({"caption": ""}, r"`caption` is empty \(''\)"),
        ({"caption": " \n"}, r"`caption` is empty"),
        ({"id": 5}, r"`id` must be a string or None, got 5 \(int\)"),
    ],
)
def test_query_refuses_wrong_types_naming_the_argument(kwargs, message):
    # before: Query(classes=123) raised a TypeError inside the vocabulary, Query(caption=42) an
    # AttributeError inside the tokenizer at segmentation; the others were accepted
    with pytest.raises(ValueError, match=message):
        Query(**kwargs)


def test_query_still_takes_classes_in_each_allowed_form():
    assert Query(classes="cat, tv/monitor|screen").classes == (("cat",), ("tv/monitor", "screen"))
    assert Query(classes=["cat", ("tv", "monitor")]).classes == (("cat",), ("tv", "monitor"))
    assert Query(classes=(c for c in ["a", "b"])).classes == (("a",), ("b",))
    assert Query(classes=None, caption="a cat", id="x").caption == "a cat"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"backbone": "toy"}, r"`backbone` must be a loaded model or None, got the str 'toy'; load it first"),
        ({"resources": ["clip"]}, r"`resources` must be a mapping of resource name -> model or path, got list"),
        ({"resources": "clip"}, r"`resources` must be a mapping .* got str 'clip'"),
        ({"preset": "sdx"}, r"`preset` must be a model family of \('sd1', .*got 'sdx'"),
        ({"preset": 3}, r"`preset` must be a model family .*got 3"),
        ({"probe": "cat"}, r"`probe` must be a Query \(without an image\) or None, got str"),
        ({"class_filter": 3}, r"`class_filter` must be None, a name of .* got 3 \(int\)"),
    ],
)
def test_segmenter_refuses_wrong_arguments_naming_them(kwargs, message):
    # before: a string backbone, a list of resources, a probe string and a filter that is not
    # callable failed deep inside (AttributeError, TypeError); an unknown preset was ignored
    from diffuseg import Segmenter

    backbone = kwargs.pop("backbone", None)
    with pytest.raises(ValueError, match=message):
        Segmenter(backbone, "kmeans-color", **kwargs)


@pytest.mark.parametrize(
    "queries",
    [
        "photo.png",
        Path("photo.png"),
        Query(image=np.zeros((8, 8, 3), np.uint8)),
        np.zeros((8, 8, 3), np.uint8),
        torch.zeros(3, 8, 8),
    ],
    ids=["str", "path", "query", "array", "tensor"],
)
def test_segment_batch_refuses_one_image_in_place_of_a_list(queries):
    # before: a path was segmented letter by letter ("image file not found: p"), a Query raised
    # "'Query' object is not iterable", an (H, W, 3) array was H images of one row each
    from diffuseg import Segmenter

    with pytest.raises(ValueError, match=r"`queries` must be a sequence of queries or images, got one"):
        Segmenter(None, "kmeans-color").segment_batch(queries)


def test_segment_batch_still_takes_a_batch_tensor():
    from diffuseg import Segmenter

    out = Segmenter(None, "kmeans-color").segment_batch(torch.rand(2, 3, 8, 8))
    assert len(out) == 2
