"""``diffuseg eval --dataset NAME --root PATH --method M [--protocol P] [--limit N] [--out DIR]``.

Scores a method on a benchmark and writes ``DIR/<dataset>_<method>_<protocol>.{jsonl,json,md}``.
Per-image results are appended durably as they are computed; ``--resume`` continues an
interrupted run without recomputing anything. ``diffuseg eval --compare results/*.json``
prints the reports side by side. ``--engine ray`` (``--address``, ``--actors`` ...: see
``diffuseg batch``) scores on a Ray actor pool into the same store; with ``--seed`` each image's
noise comes from its own generator on either engine, so both give the same records and report.

Exit codes: 0 done, 1 done but some images were unreadable (skipped, listed in the report) or
a file could not be written on the way (what was scored is kept: rerun with ``--resume``), 2 bad
usage, a wrong dataset root, or a model that cannot be loaded. The output is checked before the
model loads: --out and --save-predictions must be folders that can be written, an existing
results file needs --resume or --overwrite (and --resume a run with the same dataset, method,
protocol, classes and seed), existing predictions of the images need --overwrite or --resume.
``--compare`` tells runs of one method apart by the settings that differ, else by their folders.
``--render-only`` rewrites the report of an existing results file from its stored counts (the
same flags name it; no model is loaded), e.g. to add metrics introduced after the run.
``--method a,b,c`` scores several methods from shared model passes (`diffuseg.eval.multi_runner`):
each gets the results file and report it would get alone.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from . import COMMANDS
from ._eval_run import _fail, _setup, load_models, run_one

__all__ = ["register", "run"]

logger = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    from ._method_options import add_method_options
    from ._options import HelpFormatter, add_model_options, add_resource_option

    p = subparsers.add_parser(
        "eval",
        help=COMMANDS["eval"],
        formatter_class=HelpFormatter,
        description="Score a method on a benchmark stored locally; writes per-image results "
        "(JSONL, resumable), a JSON report and a Markdown table into --out.",
    )
    _add_benchmark_options(p)
    _add_output_options(p)
    _add_class_options(p)
    add_resource_option(p)
    add_model_options(p)
    from .batch import add_engine_options

    add_engine_options(p)
    p.set_defaults(
        func=run,
        _owners=add_method_options(p),
        resume_hint="rerun the same command with --resume to finish (the images scored so far are kept)",
    )


def _add_benchmark_options(p: Any) -> None:
    """--dataset --root --split --method --protocol --matching --background-class --limit."""
    from ..datasets import dataset_names
    from ..eval.protocols import PROTOCOLS
    from ..eval.settings import MATCHINGS
    from ..eval.suites import SUITES
    from ._method_options import method_help

    p.add_argument(
        "--dataset",
        choices=[*dataset_names(), "synthetic"],
        help="benchmark name (synthetic: the package's generated scenes, no --root)",
    )
    p.add_argument(
        "--root", help="folder the official archive unpacks to (e.g. VOCdevkit); with --suite the folder holding them"
    )
    p.add_argument("--split", default=None, help="dataset split (default: the one papers report)")
    p.add_argument(
        "--method",
        default="diffseg",
        help="segmentation method (default diffseg), or a comma-separated list: one report per method, "
        f"their model passes shared where they agree, predictions in --save-predictions/METHOD:\n{method_help()}",
    )
    p.add_argument(
        "--suite",
        default=None,
        choices=sorted(SUITES),
        help="score every benchmark of a suite found under --root (a folder holding VOCdevkit, coco, "
        "cityscapes, ADEChallengeData2016), each with its paper's protocol, into its own resumable "
        "results file; prints one table with the mean mIoU (ovss: the eight training-free OVSS "
        "benchmarks with SCLIP's class names; diffcut: DiffCut's six; diffseg: COCO-Stuff-27, Cityscapes-27)",
    )
    p.add_argument(
        "--protocol",
        default=None,
        choices=sorted(PROTOCOLS),
        help="crop / resolution preset (default full: the whole image, scored at full resolution; "
        "diffseg / diffcut / maskdiffusion fix the model input at 512 / 1024 / 512 px, so --size goes "
        "with full only; maskdiffusion scores at 256 x 352 as its Cityscapes evaluation)",
    )
    p.add_argument(
        "--matching",
        default=None,
        choices=MATCHINGS,
        help="label matching (default: none for open-vocabulary methods, else hungarian-per-image)",
    )
    p.add_argument(
        "--background-class",
        type=int,
        default=None,
        help="background class id for --matching diffcut-background (default: the dataset's)",
    )
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")


def _add_output_options(p: Any) -> None:
    """--out --name --resume --overwrite --save-predictions --compare --no-progress."""
    p.add_argument("--out", default="results", help="output folder (default ./results)")
    p.add_argument("--name", default=None, help="file stem (default <dataset>_<method>_<protocol>)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--overwrite", action="store_true", help="discard an existing run of that name")
    p.add_argument(
        "--save-predictions",
        default=None,
        metavar="DIR",
        help="also write each prediction (label PNG, overlay, JSON) into DIR",
    )
    p.add_argument(
        "--compare",
        nargs="+",
        metavar="REPORT",
        help="print these report JSON files side by side and exit",
    )
    p.add_argument(
        "--compare-published",
        action="store_true",
        help="with --suite: print the published numbers (docs/published_results.md) beside the run's",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite the report (.json / .md) of the results file these flags name from its stored "
        "counts, with every current metric; loads no model and scores nothing",
    )


def _add_class_options(p: Any) -> None:
    """--classes --filter --tune-background."""
    from ..eval.settings import BACKGROUND_SWEEP, CLASS_SETTINGS
    from ._options import add_filter_option

    p.add_argument(
        "--classes",
        default="all",
        choices=CLASS_SETTINGS,
        help="class names of each image's query (default all: every dataset class, true open vocabulary; "
        "gt-labels: the image's ground-truth labels, the papers' weakly supervised setting, an oracle; "
        "reported as such)",
    )
    p.add_argument(
        "--class-names",
        default=None,
        metavar="FILE",
        help="the names each query carries, one line per dataset class in its order, synonyms separated "
        "by ',' (the OVSS papers' configs/cls_*.txt; the first name is shown); a class scores the best "
        "of its names",
    )
    add_filter_option(p)
    p.add_argument(
        "--tune-background",
        action="store_true",
        help=f"also score each image at the background scores {BACKGROUND_SWEEP[0]:.2f}, "
        f"{BACKGROUND_SWEEP[1]:.2f}, ..., {BACKGROUND_SWEEP[-1]:.2f} (the reference's sweep; re-uses the "
        "recorded features) and report the best, tuned on the evaluated split; methods with a "
        "background_score only",
    )


def _compare(paths: list[str]) -> int:
    from ..eval.report import compare_reports, load_report

    try:
        reports = [load_report(p) for p in paths]
    except OSError as e:
        return _fail(f"--compare {e.filename}: {e.strerror}." if e.filename else f"--compare: {e}")
    except ValueError as e:
        return _fail(str(e))
    print(compare_reports(reports, paths), end="")
    return 0


def _summary(spec: Any, report: dict[str, Any]) -> int:
    """Print the report's headline and where it is; the exit code (1: images were skipped)."""
    from ..eval.report import HEADLINE, HEADLINE_NAMES, tuning_line

    m, d = report["metrics"], report["dataset"]
    values = "  ".join(
        f"{name} {'-' if m.get(k) is None else f'{100 * m[k]:.2f}'}"
        for k, name in zip(HEADLINE, HEADLINE_NAMES, strict=True)
    )
    print(
        f"{spec.name} on {d['name']} ({report['protocol']['name']}, {report['matching']}): "
        f"{values}  ({d['num_evaluated']} images)"
    )
    tuned = tuning_line(report)
    if tuned:
        print(tuned)
    print(f"report: {str(report['results_file'])[: -len('.jsonl')]}.json / .md")
    if d["num_skipped"]:
        print(
            f"diffuseg eval: {d['num_skipped']} unreadable image(s) skipped; listed in the report.",
            file=sys.stderr,
        )
        return 1
    return 0


def _render(args: argparse.Namespace) -> int:
    """--render-only: rewrite the report of the results file the flags name (`render_report`)."""
    from ..datasets import load_dataset, read_class_names_file
    from ..eval import EngineOptions
    from ..eval.render import render_report
    from ..eval.settings import BACKGROUND_SWEEP
    from ..methods import get_method
    from ._eval_run import _output_options
    from ._method_options import method_overrides, parse_methods

    try:
        if args.suite:
            raise ValueError(
                f"--render-only rewrites the report of one --dataset; for --suite {args.suite}, rerun the suite "
                "with --resume (finished images are not recomputed) or render each benchmark with --dataset and --name."
            )
        if not args.dataset or (not args.root and args.dataset != "synthetic"):
            raise ValueError("`--dataset` and `--root` are required (or use --compare).")
        if args.resume or args.overwrite or args.save_predictions:
            raise ValueError("--render-only scores nothing; leave out --resume, --overwrite and --save-predictions.")
        names = parse_methods(args.method)
        dataset = load_dataset(args.dataset, args.root, args.split)
        class_names = read_class_names_file(args.class_names) if args.class_names is not None else None
        reports = {}
        for name in names:  # each method of a list has its own results file
            spec = get_method(name)
            reports[spec.name] = render_report(
                dataset,
                spec.name,
                protocol=args.protocol or "full",
                matching=args.matching,
                background_class=args.background_class,
                classes=args.classes,
                class_names=class_names,
                tune_background=BACKGROUND_SWEEP if args.tune_background else None,
                limit=args.limit,
                seed=args.seed,
                config_overrides=method_overrides(args, spec.name, args._owners, names if len(names) > 1 else ()),
                engine=EngineOptions(engine=args.engine),
                output=_output_options(args),
            )
    except (ValueError, FileNotFoundError) as e:
        return _fail(e)
    return max(_summary(get_method(name), reports[name]) for name in reports)


def run(args: argparse.Namespace) -> int:
    """Run ``diffuseg eval``; returns the exit code."""
    if args.compare:
        return _compare(args.compare)
    if args.render_only:
        return _render(args)
    if args.suite or args.compare_published:
        from .eval_suite import run_suite

        return run_suite(args)
    try:
        setup = _setup(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        return _fail(e)
    except ImportError:
        return _fail("--engine ray needs Ray: pip install 'diffuseg[ray]'.")
    models = load_models(args, setup)
    if isinstance(models, int):
        return models
    report = run_one(setup, models)
    if isinstance(report, int):
        return report
    reports = report if len(setup.specs) > 1 else {setup.spec.name: report}
    return max(_summary(spec, reports[spec.name]) for spec in setup.specs)
