"""Dataset adapters on tiny fake copies of the official layouts, and their bad-input errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffuseg.datasets import IGNORE_INDEX, SampleReadError, class_info, dataset_names, load_dataset


def _img(path: Path, h: int = 6, w: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 120, np.uint8)).save(path)


def _lab(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8), mode="L").save(path)


def _voc(root: Path, label: np.ndarray, ids=("a",)) -> Path:
    base = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for i in ids:
        _img(base / "JPEGImages" / f"{i}.jpg", *label.shape)
        _lab(base / "SegmentationClass" / f"{i}.png", label)
    (base / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    return root / "VOCdevkit"


def test_all_eleven_datasets_are_registered_with_class_names():
    expected = {
        "cocostuff27": 27,
        "cocostuff171": 171,
        "cocoobject81": 81,
        "cityscapes27": 27,
        "cityscapes19": 19,
        "voc21": 21,
        "voc20": 20,
        "context60": 60,
        "context59": 59,
        "ade150": 150,
        "potsdam": 3,
    }
    assert set(dataset_names()) == set(expected)
    assert len(class_info("ade150")["names"]) == 150
    assert len(class_info("cocostuff182")["names"]) == 182


def test_voc21_reads_labels_with_ignore(tmp_path):
    label = np.array([[0, 0, 15, 15, 255, 255, 3, 3]] * 6)
    ds = load_dataset("voc21", _voc(tmp_path, label))
    assert ds.name == "voc21" and len(ds) == 1 and ds.class_names[15] == "person"
    s = ds[0]
    assert s.id == "a" and s.image.mode == "RGB" and s.label.dtype == np.int64
    assert s.label.shape == (6, 8) and s.label[0].tolist() == label[0].tolist()


def test_cocostuff_mappings(tmp_path):
    root = tmp_path / "cocostuff"
    raw = np.array([[0, 1, 91, 156, 255, 15, 11, 181]] * 6)  # person, bicycle, banner, sky-other...
    ids = ["000000000139"]
    for i in ids:
        _img(root / "images" / "val2017" / f"{i}.jpg")
        _lab(root / "annotations" / "val2017" / f"{i}.png", raw)
    ds27 = load_dataset("cocostuff27", root, "val2017")
    lab = ds27[0].label[0].tolist()
    assert lab[0] == 9 and lab[1] == 11 and lab[4] == IGNORE_INDEX  # person, vehicle, ignore
    assert ds27.class_names[lab[3]] == "sky"
    ds171 = load_dataset("cocostuff171", root, "val2017")
    with pytest.raises(ValueError, match=r"\[11\]"):  # 11 = unused COCO id (street sign)
        ds171[0]
    raw[:, 6] = 2
    _lab(root / "annotations" / "val2017" / f"{ids[0]}.png", raw)
    lab171 = load_dataset("cocostuff171", root, "val2017")[0].label[0]
    assert lab171[2] == 80 and ds171.class_names[80] == "banner" and lab171[7] == 170
    obj = load_dataset("cocoobject81", root, "val2017")
    lab81 = obj[0].label[0].tolist()
    assert lab81[:3] == [1, 2, 0] and obj.class_names[lab81[5]] == "bird" and obj.background_class == 0
    # the default split is the curated 2,175-image list
    assert len(load_dataset("cocostuff27", root)) == 2175


def test_cityscapes_mappings(tmp_path):
    root = tmp_path / "cityscapes"
    raw = np.array([[0, 6, 7, 8, 11, 33, 255, 24]] * 4)
    _img(root / "leftImg8bit" / "val" / "bonn" / "bonn_000000_000019_leftImg8bit.png", 4, 8)
    _lab(root / "gtFine" / "val" / "bonn" / "bonn_000000_000019_gtFine_labelIds.png", raw)
    c27 = load_dataset("cityscapes27", root)
    assert c27[0].label[0].tolist() == [255, 255, 0, 1, 4, 26, 255, 17]
    c19 = load_dataset("cityscapes19", root)
    assert c19[0].label[0].tolist() == [255, 255, 0, 1, 2, 18, 255, 11]
    assert c19.class_names[11] == "person" and c27.ids == ["bonn_000000_000019"]


def test_context_ade_potsdam(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2010"
    _img(voc / "JPEGImages" / "x.jpg", 2, 4)
    _lab(voc / "SegmentationClassContext" / "x.png", np.array([[0, 1, 59, 255]] * 2))
    (voc / "ImageSets" / "SegmentationContext").mkdir(parents=True)
    (voc / "ImageSets" / "SegmentationContext" / "val.txt").write_text("x\n")
    assert load_dataset("context60", tmp_path / "VOCdevkit")[0].label[0].tolist() == [0, 1, 59, 255]
    assert load_dataset("context59", tmp_path / "VOCdevkit")[0].label[0].tolist() == [
        255,
        0,
        58,
        255,
    ]

    ade = tmp_path / "ADEChallengeData2016"
    _img(ade / "images" / "validation" / "ADE_val_00000001.jpg", 2, 3)
    _lab(ade / "annotations" / "validation" / "ADE_val_00000001.png", np.array([[0, 1, 150]] * 2))
    assert load_dataset("ade150", ade)[0].label[0].tolist() == [255, 0, 149]

    from scipy.io import savemat

    pots = tmp_path / "potsdam"
    (pots / "imgs").mkdir(parents=True)
    (pots / "gt").mkdir()
    savemat(pots / "imgs" / "1.mat", {"img": np.random.default_rng(0).random((3, 6, 4))})
    savemat(pots / "gt" / "1.mat", {"gt": np.array([[0, 4, 1, 5, 2, 3]] * 3, dtype=np.uint8)})
    (pots / "labelled_test.txt").write_text("1\n")
    s = load_dataset("potsdam", pots)[0]
    assert s.image.size == (6, 3) and s.label[0].tolist() == [0, 0, 1, 1, 2, 2]


def test_missing_root_names_the_expected_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="VOC2012/JPEGImages"):
        load_dataset("voc21", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="leftImg8bit"):
        load_dataset("cityscapes27", tmp_path)


def test_unknown_dataset_and_split(tmp_path):
    with pytest.raises(ValueError, match="voc21"):
        load_dataset("voc", tmp_path)
    root = _voc(tmp_path, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="split"):
        load_dataset("voc21", root, "test2012")
    with pytest.raises(FileNotFoundError, match="train.txt"):
        load_dataset("voc21", root, "train")  # a known split whose list file is missing


def test_empty_dataset(tmp_path):
    root = _voc(tmp_path, np.zeros((2, 2)), ids=())
    with pytest.raises(ValueError, match="empty"):
        load_dataset("voc21", root)


def test_mismatched_sizes_name_the_file(tmp_path):
    root = _voc(tmp_path, np.zeros((6, 8)))
    _lab(root / "VOC2012" / "SegmentationClass" / "a.png", np.zeros((5, 8)))
    with pytest.raises(ValueError, match=r"a\.png"):
        load_dataset("voc21", root)[0]


def test_label_values_outside_the_classes_raise(tmp_path):
    root = _voc(tmp_path, np.array([[0, 21, 200, 255]] * 2))
    with pytest.raises(ValueError, match=r"\[21, 200\].*a\.png|a\.png.*\[21, 200\]"):
        load_dataset("voc21", root)[0]


def test_unreadable_file_raises_sample_read_error(tmp_path):
    root = _voc(tmp_path, np.zeros((2, 2)))
    (root / "VOC2012" / "JPEGImages" / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(SampleReadError, match=r"a\.jpg"):
        load_dataset("voc21", root)[0]
