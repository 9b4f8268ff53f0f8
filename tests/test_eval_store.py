"""The per-image results file on resume: a torn last line is dropped, any other damage is an
error naming the file and line, and the file is then left exactly as it was."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from diffuseg.cli import main
from diffuseg.eval.store import CorruptResultsError, ResultStore, ResumeMismatchError

FP = {"dataset": "toy", "method": "m", "config": {"k": 1}}


def _store_with(path, n):
    store = ResultStore(path, FP)
    for i in range(n):
        store.add({"index": i, "id": f"img{i}", "iou": i / 10})
    return path.read_bytes()


def _indices(path):
    lines = [line for line in path.read_bytes().decode().splitlines() if line.strip()]
    assert json.loads(lines[0])["type"] == "header"
    return [json.loads(line)["index"] for line in lines[1:]]


# ---------------------------------------------------------------- ResultStore


def test_resume_reads_back_every_record_and_leaves_the_file_alone(tmp_path):
    path = tmp_path / "r.jsonl"
    before = _store_with(path, 3)
    store = ResultStore(path, FP, resume=True)
    assert [r["id"] for r in store.ordered()] == ["img0", "img1", "img2"]
    assert store.done(2) and not store.done(3)
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    "tail",
    [
        b'{"type":"image","index":3,"id":"img',  # killed mid-write: no newline
        b'{"type":"image","index":3,"id":"\xc3',  # ... even inside a multi-byte character
        b"\n\n",  # blank lines are not records: nothing to drop
        b'{"type":"image","ind\n',  # a last line that is not JSON
    ],
)
def test_a_torn_last_line_is_dropped_and_the_file_stays_appendable(tmp_path, caplog, tail):
    path = tmp_path / "r.jsonl"
    good = _store_with(path, 3)
    path.write_bytes(good + tail)
    with caplog.at_level(logging.WARNING, logger="diffuseg.eval.store"):
        store = ResultStore(path, FP, resume=True)
    assert sorted(store.records) == [0, 1, 2]
    if tail.strip():
        assert path.read_bytes() == good
        assert "torn last line" in caplog.text
    store.add({"index": 3, "id": "img3"})
    assert _indices(path) == [0, 1, 2, 3]


def test_a_complete_last_record_without_its_newline_is_kept(tmp_path):
    path = tmp_path / "r.jsonl"
    good = _store_with(path, 3)
    path.write_bytes(good.rstrip(b"\n"))
    store = ResultStore(path, FP, resume=True)
    assert sorted(store.records) == [0, 1, 2]
    assert path.read_bytes() == good
    store.add({"index": 3, "id": "img3"})
    assert _indices(path) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        (b"{not json", "is not valid JSON"),
        (b'{"type":"image","id":"img1"}', "without an integer 'index'"),
        (b'{"type":"image","index":"1"}', "without an integer 'index'"),
        (b"[1, 2]", "is not a JSON object"),
        (b'{"type":"image","index":1,"id":"caf\xe9"}', "is not UTF-8"),  # Latin-1, not UTF-8
    ],
)
def test_a_damaged_line_before_the_last_is_an_error_and_the_file_is_unchanged(tmp_path, bad, says):
    path = tmp_path / "r.jsonl"
    lines = _store_with(path, 4).split(b"\n")
    lines[2] = bad  # line 3 of 5 (header + 4 records)
    damaged = b"\n".join(lines)
    path.write_bytes(damaged)
    with pytest.raises(CorruptResultsError, match=r"line 3 ") as err:
        ResultStore(path, FP, resume=True)
    assert isinstance(err.value, ValueError)
    assert str(path) in str(err.value) and says in str(err.value)
    assert "`overwrite=True`" in str(err.value)  # the CLI says --overwrite
    assert path.read_bytes() == damaged


def test_bytes_that_are_not_utf8_are_an_error_even_on_the_last_line(tmp_path):
    path = tmp_path / "r.jsonl"
    damaged = _store_with(path, 2) + b'{"type":"image","index":2,"id":"\xff\xfe"}\n'
    path.write_bytes(damaged)
    with pytest.raises(CorruptResultsError, match=r"line 4 is not UTF-8"):
        ResultStore(path, FP, resume=True)
    assert path.read_bytes() == damaged


def test_a_different_run_or_no_header_is_a_mismatch_and_nothing_is_cut(tmp_path):
    path = tmp_path / "r.jsonl"
    damaged = _store_with(path, 2) + b'{"type":"image","ind'
    path.write_bytes(damaged)
    with pytest.raises(ResumeMismatchError, match=r"differs in \['config'\]"):
        ResultStore(path, {**FP, "config": {"k": 2}}, resume=True)
    assert path.read_bytes() == damaged  # the torn line is only cut once the run is known to match
    other = tmp_path / "o.jsonl"
    other.write_bytes(b'{"type":"image","index":0}\n')
    with pytest.raises(ResumeMismatchError, match="no header line"):
        ResultStore(other, FP, resume=True)
    with pytest.raises(FileExistsError, match="resume=True"):
        ResultStore(path, FP)


# ---------------------------------------------------------------- through the CLI


def _eval(out, *extra):
    argv = ["eval", "--dataset", "synthetic", "--method", "single-segment", "--limit", "4"]
    return main([*argv, "--out", str(out), "--no-progress", *extra])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 4-image run: (its --out folder, its results file's bytes)."""
    out = tmp_path_factory.mktemp("finished")
    assert _eval(out) == 0
    (results,) = out.glob("*.jsonl")
    return out, results.read_bytes()


@pytest.fixture
def run_copy(finished_run, tmp_path, capsys):
    """A copy of the finished run to damage: (its --out folder, its results file, the original lines)."""
    out = tmp_path / "out"
    shutil.copytree(finished_run[0], out)
    (results,) = out.glob("*.jsonl")
    lines = finished_run[1].split(b"\n")
    assert len(lines) == 6 and lines[-1] == b""  # header, 4 records, final newline
    capsys.readouterr()
    return out, results, lines


def test_cli_resume_drops_a_torn_last_line_and_completes_the_run(run_copy, capsys):
    out, results, lines = run_copy
    results.write_bytes(b"\n".join(lines[:4]) + b"\n" + lines[4][: len(lines[4]) // 2])  # killed mid-write
    assert _eval(out, "--resume") == 0
    assert "(4 images)" in capsys.readouterr().out
    assert _indices(results) == [0, 1, 2, 3]
    assert results.read_bytes().split(b"\n")[:4] == lines[:4]  # the records before it are kept as they were


def test_cli_resume_refuses_a_corrupt_middle_line_and_names_it(run_copy, capsys):
    out, results, lines = run_copy
    lines[2] = b"{not json"  # line 3
    damaged = b"\n".join(lines)
    results.write_bytes(damaged)
    assert _eval(out, "--resume") == 2
    err = capsys.readouterr().err
    assert "diffuseg eval: error:" in err and str(results) in err and "line 3 " in err
    assert "--overwrite" in err and "--out" in err and "`" not in err  # the library's arguments as CLI flags
    assert "Traceback" not in err
    assert results.read_bytes() == damaged


def test_cli_resume_refuses_a_file_that_is_not_utf8_and_names_it(run_copy, capsys):
    out, results, lines = run_copy
    lines[3] = lines[3][:20] + b"\xff\xfe\x80" + lines[3][20:]  # line 4
    damaged = b"\n".join(lines)
    results.write_bytes(damaged)
    assert _eval(out, "--resume") == 2
    err = capsys.readouterr().err
    assert str(results) in err and "not UTF-8" in err and "line 4 " in err
    assert "Traceback" not in err
    assert results.read_bytes() == damaged
