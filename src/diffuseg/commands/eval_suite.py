"""``diffuseg eval --suite NAME --root DATA --method M [--compare-published] [--resume]``.

Scores a method on every benchmark of a suite (`diffuseg.eval.suites`) found under DATA, each
with its paper's protocol, matching and class names, into its own resumable results file
``--out/<suite>_<dataset>_<method>.jsonl``; a missing benchmark is skipped with a line saying
where it was looked for. Prints one Markdown table in the papers' order with the mean mIoU over
the rows that ran, and writes it as ``--out/suite_<suite>_<method>.md`` / ``.json``.

Exit codes: 0 done, 1 done but images were skipped or a file could not be written, 2 bad usage
(also: --root holds none of the suite's datasets).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["run_suite"]

#: Flags a suite sets per benchmark itself, and what each one would clash with.
_SUITE_FIXES = {
    "dataset": "--dataset",
    "split": "--split",
    "name": "--name",
    "protocol": "--protocol",
    "class_names": "--class-names",
    "matching": "--matching",
    "background_class": "--background-class",
}


def _check_flags(args: argparse.Namespace) -> None:
    """Raise `ValueError` for flags that do not go with --suite."""
    if not args.suite:
        raise ValueError("--compare-published goes with --suite (it prints the published numbers of its benchmarks).")
    given = [flag for attr, flag in _SUITE_FIXES.items() if getattr(args, attr, None) is not None]
    if given:
        raise ValueError(
            f"--suite {args.suite} sets {', '.join(given)} per benchmark itself; leave "
            f"{'it' if len(given) == 1 else 'them'} out."
        )
    from ._method_options import parse_methods

    if len(parse_methods(args.method)) > 1:
        raise ValueError(f"--suite runs one method at a time; --method {args.method} names several.")
    if not args.root:
        raise ValueError(f"--suite {args.suite} needs --root, the folder holding the datasets' folders.")
    if args.resume and args.overwrite:
        raise ValueError("--resume continues the results files and --overwrite discards them; give one of them.")


def _benchmark_args(args: argparse.Namespace, bench: Any, settings: dict[str, Any]) -> argparse.Namespace:
    """The flags of one benchmark: the suite entry's dataset, folder, split, protocol and matching
    (`settings`: `diffuseg.eval.suites.entry_settings`)."""
    entry = bench.entry
    return argparse.Namespace(
        **{
            **vars(args),
            "dataset": entry.dataset,
            "root": str(bench.path),
            "split": entry.split,
            "protocol": settings["protocol"],
            "matching": settings["matching"],
            "name": settings["name"],
        }
    )


def run_suite(args: argparse.Namespace) -> int:
    """Run ``diffuseg eval --suite``; returns the exit code."""
    from ..eval.suite_report import suite_markdown, suite_row, suite_summary, write_suite
    from ..eval.suites import entry_settings, find_benchmarks
    from ..methods import get_method
    from ._eval_run import _fail, _setup, load_models, run_one

    try:
        _check_flags(args)
        method = get_method(args.method).name
        benches = find_benchmarks(args.suite, args.root)
    except ValueError as e:
        return _fail(e)
    setups = {}
    for bench in benches:
        if bench.missing:
            print(f"{bench.entry.label}: skipped, {bench.missing}")
            continue
        settings = entry_settings(args.suite, bench.entry, method)
        try:  # every benchmark's flags and output are checked before the model loads
            setups[bench.entry.label] = _setup(
                _benchmark_args(args, bench, settings), bench.dataset, settings["class_names"]
            )
        except (ValueError, FileNotFoundError, FileExistsError) as e:
            return _fail(f"{bench.entry.label}: {e}")
        except ImportError:
            return _fail("--engine ray needs Ray: pip install 'diffuseg[ray]'.")
    models = load_models(args, next(iter(setups.values())))
    if isinstance(models, int):
        return models
    rows, code = [], 0
    for bench in benches:
        if bench.missing:
            rows.append(suite_row(bench, None))
            continue
        report = run_one(setups[bench.entry.label], models)
        if isinstance(report, int):
            return report
        code = max(code, 1 if report["dataset"]["num_skipped"] else 0)
        rows.append(suite_row(bench, report))
    summary = suite_summary(args.suite, method, rows, compare_published=args.compare_published)
    try:
        path = write_suite(summary, args.out)
    except OSError as e:
        print(suite_markdown(summary), end="")
        return _fail(f"cannot write the suite table into {args.out}: {e}", code=1)
    print(suite_markdown(summary), end="")
    print(f"table: {path.with_suffix('')}.json / .md")
    if code:
        print("diffuseg eval: unreadable images were skipped; listed in each benchmark's report.", file=sys.stderr)
    return code
