"""A suite's one table: a row per benchmark in the papers' order, the mean mIoU over the rows
that ran, and optionally the published numbers beside it (``diffuseg/data/published_results.json``,
the machine-readable copy of ``docs/published_results.md``).

`run_suite` scores a method on a suite (`diffuseg.eval.suites`) with `evaluate` per benchmark and
writes ``suite_<suite>_<method>.json`` / ``.md``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from ..outputs import atomic_write
from .options import OutputOptions
from .suites import SuiteBenchmark, entry_settings, find_benchmarks, mean_miou, recorded_settings

__all__ = ["run_suite", "suite_row", "suite_summary", "suite_markdown", "write_suite", "published_results"]

logger = logging.getLogger(__name__)


@cache
def _published() -> dict[str, Any]:
    ref = resources.files("diffuseg").joinpath("data", "published_results.json")
    return json.loads(ref.read_text(encoding="utf-8"))


def published_results(suite: str) -> list[dict[str, Any]]:
    """The published rows of `suite`: dicts with ``method``, ``source``, ``protocol`` and
    ``miou`` (dataset name -> mIoU in percent; a benchmark without a found number is absent)."""
    return list(_published()["suites"].get(suite, []))


def suite_row(benchmark: SuiteBenchmark, report: dict[str, Any] | None) -> dict[str, Any]:
    """One benchmark's row: ``missing`` (and where it was looked for) when `report` is None."""
    entry = benchmark.entry
    row: dict[str, Any] = {"label": entry.label, "dataset": entry.dataset, "folder": str(benchmark.path)}
    if report is None:
        return row | {"status": "missing", "missing": benchmark.missing}
    m, d = report["metrics"], report["dataset"]
    return row | {
        "status": "ok",
        "miou": m["miou"],
        "pixel_accuracy": m["pixel_accuracy"],
        "num_evaluated": d["num_evaluated"],
        "num_skipped": d["num_skipped"],
        "protocol": report["protocol"]["name"],
        "matching": report["matching"],
        "results_file": str(report["results_file"]),
        "recorded_not_applied": recorded_settings(entry),
    }


def suite_summary(
    suite: str, method: str, rows: list[dict[str, Any]], *, compare_published: bool = False
) -> dict[str, Any]:
    """The suite's table as data: rows in order, the mean mIoU over the rows that ran (and
    which), and the published rows when `compare_published`."""
    ran = [r for r in rows if r["status"] == "ok"]
    summary: dict[str, Any] = {
        "suite": suite,
        "method": method,
        "rows": rows,
        "average": {
            "miou": mean_miou([r["miou"] for r in ran]),
            "over": [r["label"] for r in ran],
            "of": len(rows),
        },
    }
    if compare_published:
        summary["published"] = published_results(suite)
    return summary


def _pct(value: float | None) -> str:
    return "–" if value is None or value != value else f"{100 * value:.1f}"


def _published_cell(pub: dict[str, Any], dataset: str) -> str:
    value = pub["miou"].get(dataset)
    return "–" if value is None else f"{value:.1f}"


def _published_mean(pub: dict[str, Any], over: list[str], labels: dict[str, str]) -> str:
    """The published method's mean over the same rows (``n/a`` if it lacks one of them)."""
    values = [pub["miou"].get(labels[label]) for label in over]
    if not values or any(v is None for v in values):
        return "n/a"
    return f"{sum(values) / len(values):.1f}"


def suite_markdown(summary: dict[str, Any]) -> str:
    """The suite's table in Markdown: benchmark, dataset, images, mIoU, pixel accuracy, status
    (and a column per published method), then the average row."""
    pubs = summary.get("published") or []
    head = ["benchmark", "dataset", "images", "mIoU", "pixel acc.", "status", *(p["method"] for p in pubs)]
    lines = [
        f"# Suite {summary['suite']}: {summary['method']}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in summary["rows"]:
        ok = r["status"] == "ok"
        cells = [
            r["label"],
            r["dataset"],
            str(r["num_evaluated"]) if ok else "–",
            _pct(r.get("miou")),
            _pct(r.get("pixel_accuracy")),
            "ok" if ok else "missing",
            *(_published_cell(p, r["dataset"]) for p in pubs),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    avg = summary["average"]
    labels = {r["label"]: r["dataset"] for r in summary["rows"]}
    over = avg["over"]
    tail = ["**average**", f"{len(over)} of {avg['of']}", "", _pct(avg["miou"]), "", ""]
    lines.append("| " + " | ".join(tail + [_published_mean(p, over, labels) for p in pubs]) + " |")
    lines += ["", f"Average: mean mIoU over {', '.join(over) or 'no rows'} ({len(over)} of {avg['of']} benchmarks)."]
    missing = [r for r in summary["rows"] if r["status"] != "ok"]
    lines += [f"Missing {r['label']}: {r['missing']}" for r in missing]
    recorded = next((r["recorded_not_applied"] for r in summary["rows"] if r.get("recorded_not_applied")), None)
    if recorded:
        lines.append(
            "Recorded from the papers' configs but not applied (see the JSON per row): " + ", ".join(sorted(recorded))
        )
    for p in pubs:
        lines.append(f"{p['method']}: {p['source']} ({p['protocol']})")
    return "\n".join(lines) + "\n"


def write_suite(summary: dict[str, Any], out_dir: str | os.PathLike) -> Path:
    """Write ``suite_<suite>_<method>.json`` and ``.md`` into `out_dir`; returns the JSON's path."""
    from .runner import run_name

    stem = run_name("suite", summary["suite"], summary["method"])
    out = Path(out_dir)
    json_path = out / f"{stem}.json"
    atomic_write(json_path, (json.dumps(summary, indent=1) + "\n").encode(), overwrite=True)
    atomic_write(out / f"{stem}.md", suite_markdown(summary).encode(), overwrite=True)
    return json_path


def run_suite(
    suite: str,
    root: str | os.PathLike,
    method: str,
    *,
    output: OutputOptions | None = None,
    compare_published: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """Score `method` on every benchmark of `suite` found under `root`, each with its entry's
    protocol, matching and class names, into its own resumable results file
    (``<suite>_<dataset>_<method>``); a missing benchmark is logged and its row marked missing.

    Args:
        suite: a name of `diffuseg.eval.suites.SUITES`.
        root: the folder holding each dataset's folder (`diffuseg.eval.suites.SUITE_FOLDERS`).
        method: registry name of the method.
        output: where the results and the table go (its ``name`` is replaced per benchmark).
        compare_published: add the published numbers to the table.
        **kwargs: further `evaluate` arguments (backbone, config_overrides, limit, ...).

    Returns:
        The suite's summary (`suite_summary`), also written as ``suite_<suite>_<method>.json`` / ``.md``.

    Raises:
        ValueError: an unknown `suite`, a `root` holding none of its datasets, or what
            `evaluate` raises.
    """
    from .runner import evaluate

    output = output or OutputOptions()
    rows = []
    for bench in find_benchmarks(suite, root):
        if bench.missing:
            logger.warning("%s: skipped, %s", bench.entry.label, bench.missing)
            rows.append(suite_row(bench, None))
            continue
        settings = entry_settings(suite, bench.entry, method)
        out = dataclasses.replace(output, name=settings.pop("name"))
        rows.append(suite_row(bench, evaluate(bench.dataset, method, output=out, **settings, **kwargs)))
    summary = suite_summary(suite, method, rows, compare_published=compare_published)
    write_suite(summary, output.out_dir)
    return summary
