"""Reports: a JSON document and a Markdown table per run, and side-by-side comparisons.

A report is computed only from the stored per-image records, so it is reproducible: the same
records give the same metrics, whether the run was interrupted or not. Values that depend on
when and how fast it ran (timestamps, seconds per image) live under ``run``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from ..outputs import atomic_write
from .metrics import MATCHINGS, ImageCounts, MetricAccumulator

__all__ = [
    "build_report",
    "write_report",
    "to_markdown",
    "compare_reports",
    "load_report",
    "sweep_key",
    "tuning_line",
    "TUNING_NOTE",
]

logger = logging.getLogger(__name__)

_TUNED_ON = "tuned on the evaluated split"
#: How a swept setting was chosen: on the split it is scored on, as the reference's evaluation.
TUNING_NOTE = f"{_TUNED_ON} (an oracle, as the reference's evaluation)"

_PACKAGES = (
    "diffuseg",
    "torch",
    "diffusers",
    "transformers",
    "numpy",
    "scipy",
    "scikit-image",
    "pillow",
)


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _applicable(primary: str, open_vocabulary: bool, background_class: int | None) -> list[str]:
    """The matchings worth listing next to `primary` for this method and dataset."""
    out = [m for m in MATCHINGS if m != "none" or open_vocabulary]
    if background_class is None:
        out = [m for m in out if m != "diffcut-background"]
    return [primary] + [m for m in out if m != primary]


def sweep_key(value: float) -> str:
    """The key of a swept value in an image record's ``sweep`` (``float(key) == value``)."""
    return repr(float(value))


def _tuning(
    ok: Sequence[dict[str, Any]],
    tuning: dict[str, Any],
    num_classes: int,
    matching: str,
    background_class: int | None,
) -> dict[str, Any]:
    """The ``background_tuning`` section: each swept value's mIoU over the images scored at every
    value (from the records' ``sweep``), and the best value (the first of equals)."""
    values = [float(v) for v in tuning["values"]]
    keys = [sweep_key(v) for v in values]
    usable = [r for r in ok if all((r.get("sweep") or {}).get(k) is not None for k in keys)]
    miou: list[float | None] = []
    for k in keys:
        acc = MetricAccumulator(num_classes, matching, background_class)
        for r in usable:
            acc.add(ImageCounts.from_record(r["sweep"][k], num_classes))
        m = acc.result().miou
        miou.append(None if m != m else float(m))
    best = max((j for j, m in enumerate(miou) if m is not None), key=lambda j: miou[j], default=None)
    return {
        "field": tuning["field"],
        "values": values,
        "miou": miou,
        "best": None if best is None else values[best],
        "best_miou": None if best is None else miou[best],
        "default": tuning["default"],
        "num_images": len(usable),
        "note": TUNING_NOTE,
    }


def build_report(
    records: Sequence[dict[str, Any]],
    *,
    class_names: Sequence[str],
    dataset: Any,
    method: Any,
    config: Any,
    protocol: Any,
    matching: str,
    background_class: int | None,
    model_id: str | None,
    num_requested: int,
    results_file: str | os.PathLike | None = None,
    preset: dict[str, Any] | None = None,
    classes: str = "all",
    background_tuning: dict[str, Any] | None = None,
    class_filter: Any = None,
) -> dict[str, Any]:
    """Assemble the report of one run from its per-image records (dataset order).

    `classes` is the run's class setting (`diffuseg.eval.runner.CLASS_SETTINGS`); `class_filter`
    its class filter as the fingerprint records it (None: none), summarised from the records'
    ``class_filter`` entries (classes kept per image, images where it kept nothing and fell back).
    `background_tuning` (``{"field", "values", "default"}``, or None) adds the section of the same
    name: each swept value's mIoU from the records' ``sweep`` counts, the best value and `TUNING_NOTE`.
    """
    c = len(class_names)
    ok = [r for r in records if r["status"] == "ok"]
    skipped = [{"id": r["id"], "error": r.get("error", "")} for r in records if r["status"] != "ok"]
    counts = [ImageCounts.from_record(r["counts"], c) for r in ok]
    scores: dict[str, Any] = {}
    for m in _applicable(matching, bool(method.open_vocabulary), background_class):
        acc = MetricAccumulator(c, m, background_class)
        for ic in counts:
            acc.add(ic)
        scores[m] = acc.result()
    primary = scores[matching].to_dict(class_names)
    seconds = [float(r["seconds"]) for r in ok]
    return {
        "dataset": {
            "name": dataset.name,
            "split": getattr(dataset, "split", None),
            "root": getattr(dataset, "root", None),
            "num_classes": c,
            "class_names": list(class_names),
            "background_class": background_class,
            "num_samples": len(dataset),
            "num_requested": num_requested,
            "num_evaluated": len(ok),
            "num_skipped": len(skipped),
            "skipped": skipped,
        },
        "method": {
            "name": method.name,
            "open_vocabulary": bool(method.open_vocabulary),
            "config": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config,
            "preset": preset,
        },
        "classes": classes,
        "class_filter": _filter_summary(class_filter, ok),
        "model": model_id,
        "protocol": protocol.record(),
        "matching": matching,
        "metrics": primary,
        "other_matchings": {m: _headline(s.to_dict()) for m, s in scores.items() if m != matching},
        "background_tuning": (
            None if background_tuning is None else _tuning(ok, background_tuning, c, matching, background_class)
        ),
        "versions": _versions(),
        "results_file": str(results_file) if results_file is not None else None,
        "run": {
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "seconds_per_image": (sum(seconds) / len(seconds)) if seconds else None,
            "seconds_total": sum(seconds),
        },
    }


#: The headline metrics of each matching, in the order tables show them (`HEADLINE_NAMES`).
HEADLINE = ("miou", "macc", "fwiou", "aacc")
HEADLINE_NAMES = ("mIoU", "mAcc", "fwIoU", "aAcc")


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline metrics of one matching's ``Scores.to_dict()``, and ``pixel_accuracy`` (= aAcc)."""
    return {**{k: metrics[k] for k in HEADLINE}, "pixel_accuracy": metrics["pixel_accuracy"]}


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _cells(metrics: dict[str, Any]) -> str:
    """``mIoU | mAcc | fwIoU | aAcc`` in percent; reports written before mAcc / fwIoU / aAcc
    existed give ``-`` for the first two and their ``pixel_accuracy`` (the same number) for aAcc."""
    values = {**metrics, "aacc": metrics.get("aacc", metrics.get("pixel_accuracy"))}
    return " | ".join(_pct(values.get(k)) for k in HEADLINE)


def tuning_line(report: dict[str, Any]) -> str | None:
    """One line on the report's background tuning (best value and its mIoU), or None without one."""
    t = report.get("background_tuning")
    if not t:
        return None
    best = "-" if t["best"] is None else t["best"]
    return (
        f"{t['field']} {_TUNED_ON}: best {best}, mIoU {_pct(t['best_miou'])} "
        f"(the config's {t['default']}: {_pct(report['metrics']['miou'])}; "
        f"{len(t['values'])} values, {t['num_images']} images)"
    )


def _filter_summary(class_filter: Any, ok: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    if class_filter is None:
        return None
    kept = [len(r["class_filter"]["kept"]) for r in ok if "class_filter" in r]
    return {
        "filter": class_filter,
        "kept_per_image": sum(kept) / len(kept) if kept else None,
        "fell_back": sum(bool(r["class_filter"]["fell_back"]) for r in ok if "class_filter" in r),
    }


def _filter_name(summary: dict[str, Any]) -> str:
    f = summary["filter"]
    return f.get("name", "?") if isinstance(f, dict) else str(f)


def to_markdown(report: dict[str, Any]) -> str:
    """A Markdown summary: one results row, mIoU / mAcc / fwIoU / aAcc under each matching,
    then per-class IoU and accuracy (of the run's matching). Old reports (without mAcc, fwIoU,
    per-class accuracy) show ``-`` there."""
    d, m, met = report["dataset"], report["method"], report["metrics"]
    spi = report["run"]["seconds_per_image"]
    lines = [
        f"# {m['name']} on {d['name']} ({d['split']})",
        "",
        f"protocol **{report['protocol']['name']}**, matching **{report['matching']}**, "
        f"classes **{report['classes']}**"
        + (
            f" (filter **{_filter_name(report['class_filter'])}**, "
            f"{report['class_filter']['kept_per_image'] or 0:.2f} kept per image), "
            if report.get("class_filter")
            else ", "
        )
        + f"model {report['model'] or '-'}; {d['num_evaluated']} images scored, "
        f"{d['num_skipped']} skipped.",
        "",
        f"| method | dataset | protocol | matching | {' | '.join(HEADLINE_NAMES)} | s / image |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
        f"| {m['name']} | {d['name']} | {report['protocol']['name']} | {report['matching']} | "
        f"{_cells(met)} | {'-' if spi is None else f'{spi:.3f}'} |",
        "",
    ]
    tuned = tuning_line(report)
    if tuned:
        lines += [tuned, ""]
    if report["other_matchings"]:
        lines += [f"| matching | {' | '.join(HEADLINE_NAMES)} |", "|---|---:|---:|---:|---:|"]
        rows = {report["matching"]: met, **report["other_matchings"]}
        lines += [f"| {k}{' (reported)' if k == report['matching'] else ''} | {_cells(v)} |" for k, v in rows.items()]
        lines.append("")
    acc = met.get("acc") or [None] * len(met["iou"])
    lines += ["| class | IoU | Acc |", "|---|---:|---:|"]
    lines += [f"| {n} | {_pct(v)} | {_pct(a)} |" for n, v, a in zip(d["class_names"], met["iou"], acc, strict=True)]
    if d["skipped"]:
        lines += ["", "Skipped (unreadable):", ""] + [f"- {s['id']}: {s['error']}" for s in d["skipped"]]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], json_path: str | os.PathLike, md_path: str | os.PathLike) -> None:
    """Write the report as JSON and Markdown (atomically; replaces earlier reports of the run)."""
    atomic_write(json_path, (json.dumps(report, indent=1) + "\n").encode(), overwrite=True)
    atomic_write(md_path, to_markdown(report).encode(), overwrite=True)


def load_report(path: str | os.PathLike) -> dict[str, Any]:
    """Read a report JSON written by `write_report`.

    Raises:
        ValueError: if the file is not a diffuseg report.
    """
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON: {e}") from e
    if not isinstance(report, dict) or "metrics" not in report or "protocol" not in report:
        raise ValueError(f"{path} is not a diffuseg eval report (no `metrics`/`protocol`).")
    return report


def _settings(report: dict[str, Any]) -> dict[str, str]:
    """What a run's heading may need beyond method and protocol, as text per setting."""
    d = report.get("dataset") or {}
    out = {
        "split": d.get("split"),
        "matching": report.get("matching"),
        "model": report.get("model"),
        "classes": report.get("classes"),
        "filter": _filter_name(report["class_filter"]) if report.get("class_filter") else None,
        "images": d.get("num_evaluated"),
    }
    config = (report.get("method") or {}).get("config")
    if isinstance(config, dict):
        out.update(config)
    text = {k: v if isinstance(v, str) else json.dumps(v) for k, v in out.items()}
    return {k: v.replace("|", "\\|") for k, v in text.items()}  # a table cell


def _run_names(sources: Sequence[str | os.PathLike]) -> list[str]:
    """The shortest tail of each report's path (folder, folder/stem, the whole path) that tells
    them apart; else their position."""
    paths = [Path(p) for p in sources]
    for tail in (
        lambda p: p.parent.name,
        lambda p: f"{p.parent.name}/{p.stem}",
        lambda p: str(p.with_suffix("")),
    ):
        names = [tail(p) for p in paths]
        if all(names) and len(set(names)) == len(names):
            return names
    return [f"#{i + 1}" for i in range(len(paths))]


def _headings(reports: Sequence[dict[str, Any]], sources: Sequence[Any]) -> tuple[list[str], list[str]]:
    """Per report: ``method / protocol`` and, for reports that share it and the dataset, what
    tells them apart (the settings that differ, else the run's folder or file); both lists in
    report order."""
    base = [f"{r['method']['name']} / {r['protocol']['name']}" for r in reports]
    keys = [(b, r["dataset"]["name"]) for b, r in zip(base, reports, strict=True)]
    extra = [""] * len(reports)
    for key in dict.fromkeys(keys):
        group = [i for i, k in enumerate(keys) if k == key]
        if len(group) < 2:
            continue
        settings = [_settings(reports[i]) for i in group]
        differ = [k for k in dict.fromkeys(k for s in settings for k in s) if len({s.get(k) for s in settings}) > 1]
        parts = [", ".join(f"{k}={s.get(k, '-')}" for k in differ) for s in settings]
        if len(set(parts)) < len(parts):
            runs = _run_names([sources[i] for i in group])
            parts = [f"{p}, run {n}" if p else f"run {n}" for p, n in zip(parts, runs, strict=True)]
        for i, part in zip(group, parts, strict=True):
            extra[i] = part
    return base, extra


def compare_reports(reports: Sequence[dict[str, Any]], sources: Sequence[str | os.PathLike] | None = None) -> str:
    """A Markdown table, one row per report (mIoU, mAcc, fwIoU, aAcc), plus per-class IoU and
    per-class accuracy tables when they share a dataset (``-`` where an old report lacks a value).

    Reports of the same method, protocol and dataset are told apart by what differs between
    them (a config field, the matching, the model...; else the folder or name of the run: of
    `sources`, the report files' paths, if given, else of each report's results file): a column
    ``differs`` in the table, and the per-class columns' headings.

    Raises:
        ValueError: naming `reports` if it is empty, or `sources` if it is not one path per report.
    """
    if not reports:
        raise ValueError("`reports` is empty; give at least one report.")
    if sources is None:
        sources = [str(r.get("results_file") or "") for r in reports]
    elif len(sources) != len(reports):
        raise ValueError(f"`sources` must give one path per report ({len(reports)}), got {len(sources)}.")
    base, extra = _headings(reports, sources)
    differs = any(extra)
    lines = [
        f"| method | dataset | protocol | matching | model | images | {' | '.join(HEADLINE_NAMES)} | s / image |"
        + (" differs |" if differs else ""),
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|" + ("---|" if differs else ""),
    ]
    for r, e in zip(reports, extra, strict=True):
        spi = r["run"]["seconds_per_image"]
        lines.append(
            f"| {r['method']['name']} | {r['dataset']['name']} | {r['protocol']['name']} | "
            f"{r['matching']} | {r['model'] or '-'} | {r['dataset']['num_evaluated']} | "
            f"{_cells(r['metrics'])} | {'-' if spi is None else f'{spi:.3f}'} |" + (f" {e or '-'} |" if differs else "")
        )
    datasets = {r["dataset"]["name"] for r in reports}
    if len(datasets) == 1:
        names = reports[0]["dataset"]["class_names"]
        heads = [f"{b} ({e})" if e else b for b, e in zip(base, extra, strict=True)]
        for first, key in (("class", "iou"), ("class (accuracy)", "acc")):
            lines += ["", f"| {first} | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(reports)]
            per_class = [r["metrics"].get(key) or [None] * len(names) for r in reports]
            lines += [f"| {n} | " + " | ".join(_pct(v[k]) for v in per_class) + " |" for k, n in enumerate(names)]
    return "\n".join(lines) + "\n"
