"""What a caller asks for, checked where it is given (issue 23, query / classes / seed).

Bad class lists, seeds, captions and images are refused with a `ValueError` naming the argument
(the CLI: the flag, exit 2, before the model loads), never a traceback from deep inside or a
silently wrong result.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffuseg.imageio import as_pil, load_image


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
