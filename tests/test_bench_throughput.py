"""The throughput benchmark's pure helpers (benchmarks/_throughput_report.py): flags, ratios,
the Markdown table and the per-device section of the report file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _throughput_report import (  # noqa: E402
    PLAIN,
    Row,
    markdown_table,
    median_seconds,
    parse_choices,
    parse_sizes,
    ratio_to_plain,
    write_section,
)


def test_parse_choices_keeps_order_and_names_bad_items():
    assert parse_choices("bf16, fp32,bf16", ["fp32", "bf16", "fp16"], "--dtypes") == ["bf16", "fp32"]
    with pytest.raises(ValueError, match=r"`--dtypes` got \['fp8'\]; allowed: \['fp32', 'bf16'\]"):
        parse_choices("fp32,fp8", ["fp32", "bf16"], "--dtypes")
    with pytest.raises(ValueError, match="at least one"):
        parse_choices(" , ", ["fp32"], "--dtypes")


def test_parse_sizes():
    assert parse_sizes("1,4,4,16", "--batch-sizes") == [1, 4, 16]
    for bad in ("0", "1,x", "-2", ""):
        with pytest.raises(ValueError, match="--batch-sizes"):
            parse_sizes(bad, "--batch-sizes")


def test_median_seconds_uses_the_clock():
    ticks = iter([0.0, 1.0, 1.0, 4.0, 4.0, 6.0])  # calls of 1, 3 and 2 s
    assert median_seconds(lambda: None, 3, lambda: next(ticks)) == 2.0


def test_ratios_pair_rows_with_the_plain_forward_of_their_batch_dtype_and_compile():
    rows = [
        Row(PLAIN, 1, "fp32", False, seconds=2.0),
        Row("diffseg", 1, "fp32", False, seconds=3.0),
        Row(PLAIN, 4, "fp32", False, seconds=6.0),
        Row("diffseg", 4, "fp32", False, seconds=9.0),
        Row("diffseg", 4, "bf16", False, seconds=1.0),  # no bf16 baseline
        Row("diffcut", 1, "fp32", False, note="skipped: no kernel"),
    ]
    ratios = ratio_to_plain(rows)
    assert [ratios[id(r)] for r in rows] == [1.0, 1.5, 1.0, 1.5, None, None]
    assert rows[3].images_per_s == pytest.approx(4 / 9) and rows[5].images_per_s is None


def test_markdown_table_shape_and_skipped_rows():
    rows = [
        Row(PLAIN, 2, "bf16", True, seconds=0.5, first_s=30.0, peak_bytes=3 * 2**30),
        Row("diffseg", 2, "bf16", True, seconds=1.0, first_s=40.0, recorded="16/32", note="1 graphs compiled"),
        Row("diffcut", 2, "bf16", True, note="ValueError: x"),
    ]
    table = markdown_table(rows, "peak allocated", absolute=True).splitlines()
    assert len(table) == 5 and all(line.count("|") == 11 for line in table)
    assert "peak allocated GiB" in table[0]
    assert table[2] == "| unet (plain forward) | 2 | bf16 | yes | 4.00 | 1.00 | 30.0 | 3.00 |  |  |"
    assert table[3].startswith("| diffseg | 2 | bf16 | yes | 2.00 | 2.00 | 40.0 |  | 16/32 |")
    assert "| skipped | skipped |" in table[4] and table[4].endswith("ValueError: x |")


def test_write_section_replaces_its_own_block_only(tmp_path):
    doc = tmp_path / "throughput.md"
    write_section(doc, "cpu", "first")
    assert doc.read_text() == "<!-- throughput:cpu:begin -->\nfirst\n<!-- throughput:cpu:end -->\n"
    doc.write_text("# Title\n\nprose\n\n" + doc.read_text() + "\nmore prose\n")
    write_section(doc, "cuda", "gpu table")
    write_section(doc, "cpu", "second\n")
    text = doc.read_text()
    assert text.startswith("# Title\n\nprose\n\n<!-- throughput:cpu:begin -->\nsecond\n<!-- throughput:cpu:end -->")
    assert "more prose" in text and "first" not in text
    assert text.rstrip().endswith("<!-- throughput:cuda:begin -->\ngpu table\n<!-- throughput:cuda:end -->")
