"""Whether existing outputs belong to this run: a done image counts as done only when its JSON
records the run's method, settings, model, seed and query.

A rerun skips the images whose outputs all exist (`work.is_done`). Without this check, a rerun
with another method or other settings into the same folder would report those images as done
and leave outputs of the old settings behind. `check_done` reads each done image's JSON before
any work and refuses the run, naming what differs, unless the caller replaces them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .inputs import Item
from .work import Job

__all__ = ["OutputMismatchError", "differences", "check_done"]

#: How many differing images the error names.
_SHOWN = 3


class OutputMismatchError(ValueError):
    """Outputs in the folder were written by a run with other settings."""


def _plain(value: Any) -> Any:
    """`value` as JSON reads it back (tuples become lists)."""
    return json.loads(json.dumps(value))


def _same_model(recorded: Any, expected: str | None) -> bool:
    """Whether two model names are the same model (paths compared by their real path)."""
    if recorded == expected:
        return True
    if isinstance(recorded, str) and expected is not None and os.path.exists(recorded) and os.path.exists(expected):
        return os.path.realpath(recorded) == os.path.realpath(expected)
    return False


def _config_differences(job: Job, record: dict[str, Any]) -> list[str]:
    """The config fields whose recorded value is not the job's (defaults, the recorded model
    family's preset, then the job's overrides)."""
    from ..methods import get_method

    meta = record.get("meta") or {}
    family = (meta.get("preset") or {}).get("family")
    config = get_method(job.method).make_config(family, **job.overrides)
    expected = _plain(dataclasses.asdict(config))
    recorded = record.get("config") or {}
    return [
        f"`{name}` {recorded.get(name)!r} (this run: {expected.get(name)!r})"
        for name in sorted(set(expected) | set(recorded))
        if recorded.get(name) != expected.get(name)
    ]


def _expected_model(job: Job) -> str | None:
    """The model name a result of `job` records (`Segmenter` meta: the backbone's name)."""
    from ..backbone import DEFAULT_MODEL

    return (job.model or DEFAULT_MODEL) if job.needs_model else None


def differences(job: Job, record: dict[str, Any]) -> list[str]:
    """What differs between the JSON `record` of an image's outputs and `job`: the method, the
    config fields, the model (and whether its T5 encoder was dropped), the run seed, the class
    names, the caption and the sliding window (empty: the same).

    Each difference reads like "`seed` 0 (this run: 3)"; library arguments are backticked.
    """
    if record.get("method") != job.method:
        return [f"method {record.get('method')!r} (this run: {job.method!r})"]
    meta = record.get("meta") or {}
    diffs = _config_differences(job, record)
    expected_model = _expected_model(job)
    if not _same_model(meta.get("model"), expected_model):
        diffs.append(f"`model` {meta.get('model')!r} (this run: {expected_model!r})")
    if bool(meta.get("drop_t5", False)) != job.drop_t5:
        diffs.append(f"`drop_t5` {bool(meta.get('drop_t5', False))} (this run: {job.drop_t5})")
    seed = (meta.get("seed") or {}).get("run")
    if seed != job.seed:
        diffs.append(f"`seed` {seed!r} (this run: {job.seed!r})")
    query = meta.get("query") or {}
    for name, value in (("classes", _plain(list(job.classes))), ("caption", job.caption)):
        if query.get(name, [] if name == "classes" else None) != value:
            diffs.append(f"`{name}` {query.get(name)!r} (this run: {value!r})")
    window = meta.get("window") or {}
    had = f"{window.get('crop')},{window.get('stride')}" if window else None
    now = str(job.window) if job.window is not None else None  # "CROP,STRIDE"
    if had != now:
        diffs.append(f"`window` {had!r} (this run: {now!r})")
    return diffs


def _read(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def check_done(job: Job, items: Sequence[Item]) -> None:
    """Refuse to treat outputs of another run as done: for each of `items` (images whose outputs
    all exist in ``job.out_dir``), its JSON must record `job`'s settings (`differences`).

    Raises:
        OutputMismatchError: naming the first images that differ, what differs, and that
            `overwrite=True` replaces them (or another `out_dir` keeps them).
    """
    bad: list[tuple[Path, list[str]]] = []
    for item in items:
        path = Path(job.out_dir) / f"{item.name}.json"
        record = _read(path)
        diffs = ["its JSON cannot be read"] if record is None else differences(job, record)
        if diffs:
            bad.append((path, diffs))
    if not bad:
        return
    shown = "; ".join(f"{path}: {', '.join(diffs)}" for path, diffs in bad[:_SHOWN])
    more = f" (and {len(bad) - _SHOWN} more)" if len(bad) > _SHOWN else ""
    raise OutputMismatchError(
        f"{len(bad)} image(s) already have outputs in {job.out_dir} made with other settings, so they do not "
        f"count as done: {shown}{more}. Pass `overwrite=True` to replace them, or another `out_dir` to keep them."
    )
