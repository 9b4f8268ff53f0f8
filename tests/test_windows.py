"""Sliding-window grid and stitching (`diffuseg.ops.windows`): known answers."""

from __future__ import annotations

import pytest
import torch

from diffuseg.ops.windows import plan_windows, stitch
from diffuseg.settings import SlidingWindow


def test_the_grid_of_a_5x7_canvas_crop_3_stride_2():
    rows, cols = [(0, 3), (2, 5)], [(0, 3), (2, 5), (4, 7)]
    assert plan_windows(5, 7, 3, 2) == [(y0, y1, x0, x1) for y0, y1 in rows for x0, x1 in cols]


def test_the_last_window_is_shifted_back_to_end_at_the_border():
    # mmseg: ceil((5 - 3) / 3) + 1 = 2 rows; the second starts at 3, ends at min(6, 5) = 5, so starts at 2
    assert plan_windows(5, 3, 3, 3) == [(0, 3, 0, 3), (2, 5, 0, 3)]
    assert plan_windows(6, 3, 3, 3) == [(0, 3, 0, 3), (3, 6, 0, 3)]  # exact fit: no overlap


def test_a_canvas_smaller_than_the_crop_is_one_window_of_itself():
    assert plan_windows(2, 2, 3, 2) == [(0, 2, 0, 2)]
    assert plan_windows(2, 9, 3, 3) == [(0, 2, 0, 3), (0, 2, 3, 6), (0, 2, 6, 9)]  # one short side


@pytest.mark.parametrize(("h", "w", "crop", "stride"), [(5, 7, 3, 2), (17, 9, 4, 3), (8, 8, 8, 1), (30, 11, 7, 7)])
def test_windows_cover_every_pixel_and_have_the_crop_size(h, w, crop, stride):
    count = torch.zeros(h, w, dtype=torch.int64)
    for y0, y1, x0, x1 in plan_windows(h, w, crop, stride):
        assert (y1 - y0, x1 - x0) == (min(crop, h), min(crop, w))
        count[y0:y1, x0:x1] += 1
    assert int(count.min()) >= 1


def test_stitching_averages_overlaps_exactly():
    boxes = plan_windows(5, 7, 3, 2)
    # crop i is the constant i + 1: a pixel's average is the mean of the windows over it
    crops = [torch.full((1, 3, 3), float(i + 1)) for i in range(len(boxes))]
    out = stitch(crops, boxes, (5, 7))
    expected = torch.zeros(5, 7)
    count = torch.zeros(5, 7)
    for i, (y0, y1, x0, x1) in enumerate(boxes):
        expected[y0:y1, x0:x1] += i + 1
        count[y0:y1, x0:x1] += 1
    torch.testing.assert_close(out[0], expected / count, rtol=0, atol=0)
    assert out[0, 0, 0] == 1.0 and out[0, 2, 2] == (1 + 2 + 4 + 5) / 4 and out[0, 4, 6] == 6.0


def test_stitching_a_ramp_cut_into_windows_gives_the_ramp_back():
    ramp = torch.arange(5 * 7, dtype=torch.float32).reshape(1, 5, 7) / 7
    ramp = torch.cat([ramp, -ramp, torch.full_like(ramp, -torch.inf)])
    boxes = plan_windows(5, 7, 3, 2)
    out = stitch([ramp[:, y0:y1, x0:x1] for y0, y1, x0, x1 in boxes], boxes, (5, 7))
    torch.testing.assert_close(out, ramp, rtol=0, atol=0)  # float64 sums: agreeing windows average exactly
    assert out.dtype == torch.float32


def test_a_constant_survives_any_number_of_overlaps_bit_for_bit():
    boxes = plan_windows(9, 9, 5, 1)  # up to 25 windows over a pixel
    crops = [torch.full((2, 5, 5), 0.3) for _ in boxes]
    assert (stitch(crops, boxes, (9, 9)) == torch.tensor(0.3)).all()


def test_stitch_refuses_uncovered_pixels_and_misfit_crops():
    with pytest.raises(ValueError, match="uncovered"):
        stitch([torch.zeros(1, 2, 2)], [(0, 2, 0, 2)], (3, 3))
    with pytest.raises(ValueError, match="does not fit"):
        stitch([torch.zeros(1, 2, 3)], [(0, 2, 0, 2)], (2, 2))
    with pytest.raises(ValueError, match="not inside"):
        stitch([torch.zeros(1, 2, 2)], [(2, 4, 0, 2)], (3, 3))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0, 1), "`window.crop` must be an int > 0, got 0"),
        ((3, 4), "`window.stride` must be at most"),
        ((3, 0), "stride"),
    ],
)
def test_sliding_window_settings_are_validated_once(args, match):
    with pytest.raises(ValueError, match=match):
        SlidingWindow(*args)
    with pytest.raises(ValueError, match="`stride` must be at most"):
        plan_windows(5, 5, 2, 3)
    assert str(SlidingWindow(336, 112)) == "336,112"
