"""Rebuild a run's report from its results file: no model is loaded and nothing is scored.

A report is a function of the stored per-image counts (`diffuseg.eval.report`), so a report
written by an older version gains the metrics added since (mAcc, fwIoU, aAcc, per-class
accuracy) and any matching can be made the headline one, from the ``.jsonl`` alone:

    >>> from diffuseg.eval import OutputOptions, load_dataset
    >>> from diffuseg.eval.render import render_report
    >>> ds = load_dataset("voc21", "~/data/VOCdevkit")
    >>> report = render_report(ds, "slic", output=OutputOptions("results"))  # rewrites the .json / .md
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..datasets import SegmentationDataset
from .options import EngineOptions, OutputOptions
from .protocols import Protocol
from .report import write_report
from .run_settings import as_options, resolve_run, run_fingerprint, run_report
from .store import ResultStore, ResumeMismatchError, _canonical

__all__ = ["render_report"]

logger = logging.getLogger(__name__)


def render_report(
    dataset: SegmentationDataset,
    method: str,
    *,
    protocol: str | Protocol = "full",
    matching: str | None = None,
    background_class: int | None = None,
    classes: str = "all",
    class_names: Sequence[Sequence[str]] | None = None,
    tune_background: Sequence[float] | None = None,
    limit: int | None = None,
    seed: int | None = None,
    config_overrides: dict[str, Any] | None = None,
    engine: EngineOptions | None = None,
    output: OutputOptions | None = None,
) -> dict[str, Any]:
    """Rewrite ``NAME.json`` and ``NAME.md`` of an `evaluate` run from its ``NAME.jsonl``.

    The arguments name the run as `evaluate`'s do (the same values find the same results file
    and must agree with the settings recorded in it); the method's config, preset, model name
    and class filter come from the file. `matching` may differ from the run's: every matching
    is scored from the stored counts. Images the run did not finish are missing from the report,
    as in the report of an interrupted run. `output.resume`, `output.overwrite` and
    `output.save_predictions` do not apply (nothing is scored); `engine` only resolves the seed
    as `evaluate` does (engine ``ray`` without a seed uses the default seed).

    Args:
        dataset, method, protocol, matching, background_class, classes, class_names,
            tune_background, limit, seed, engine, output: as for `evaluate`. Without `limit`,
            the limit the existing report (``NAME.json``) records as requested, if any.
        config_overrides: method config fields the run was given; each must equal the value
            recorded in the results file (a check only).

    Returns:
        The report dict (also written as JSON and Markdown next to the results file).

    Raises:
        FileNotFoundError: naming the results file, if there is none.
        ResumeMismatchError: the results file was written by a run with other settings
            (dataset, split, method, protocol, classes, sweep, seed, or a config field of
            `config_overrides`), or is not a results file.
        CorruptResultsError: a damaged line (see `ResultStore`); the file is left as it is.
        ValueError: what `evaluate` raises for its other arguments.
    """
    engine = as_options(engine, EngineOptions, "engine")
    output = as_options(output, OutputOptions, "output")

    def resolve(limit: int | None) -> Any:
        return resolve_run(dataset, method, engine, output, protocol, matching, background_class, classes,
                           tune_background, limit, seed, class_names)  # fmt: skip

    run = resolve(limit)
    if limit is None:  # the run's own --limit, as its last report recorded it
        recorded = _recorded_limit(Path(output.out_dir) / f"{run.name}.json", run.num)
        run = run if recorded is None else resolve(recorded)
    path = Path(output.out_dir) / f"{run.name}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"results file {path} does not exist; a report is rendered from the results of an earlier "
            f"run with the same dataset, method, protocol and `name` in `out_dir`."
        )
    store = ResultStore.read(path)
    _check_recorded(store, run_fingerprint(dataset, run), config_overrides or {})
    report = run_report(store, dataset, run, store.fingerprint)
    out = Path(output.out_dir)
    write_report(report, out / f"{run.name}.json", out / f"{run.name}.md")
    logger.info("%s: report of %d stored images rewritten", path, report["dataset"]["num_evaluated"])
    return report


def _recorded_limit(report_path: Path, num: int) -> int | None:
    """The number of images the run's last report says were requested, if fewer than `num`
    (a run with a `limit`), else None; None too when there is no readable report."""
    try:
        requested = json.loads(report_path.read_text())["dataset"]["num_requested"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if isinstance(requested, int) and not isinstance(requested, bool) and 1 <= requested < num:
        logger.info("%s: the run requested %d of %d images (its `limit`)", report_path, requested, num)
        return requested
    return None


def _check_recorded(store: ResultStore, expected: dict[str, Any], config_overrides: dict[str, Any]) -> None:
    """The results file's header agrees with the run's settings and the given config fields.

    Raises:
        ResumeMismatchError: naming the file and what differs.
    """
    recorded = store.fingerprint
    expected = _canonical(expected)
    differ = sorted(k for k in expected if recorded.get(k) != expected[k])
    if "config" not in recorded:
        differ.append("config (none recorded)")
    else:
        given = _canonical(config_overrides)
        differ += sorted(f"config.{k}" for k in given if recorded["config"].get(k) != given[k])
    if differ:
        raise ResumeMismatchError(
            f"cannot render the report of {store.path}: it was written by a run with other settings "
            f"(differs in {differ}); give the settings of that run, or another `out_dir` or `name`."
        )
