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
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from typing import Any

from . import COMMANDS

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
    from ..eval.metrics import MATCHINGS
    from ..eval.protocols import PROTOCOLS
    from ._method_options import method_help

    p.add_argument(
        "--dataset",
        choices=[*dataset_names(), "synthetic"],
        help="benchmark name (synthetic: the package's generated scenes, no --root)",
    )
    p.add_argument("--root", help="folder the official archive unpacks to (e.g. VOCdevkit)")
    p.add_argument("--split", default=None, help="dataset split (default: the one papers report)")
    p.add_argument("--method", default="diffseg", help=f"segmentation method (default diffseg):\n{method_help()}")
    p.add_argument(
        "--protocol",
        default="full",
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
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite the report (.json / .md) of the results file these flags name from its stored "
        "counts, with every current metric; loads no model and scores nothing",
    )


def _add_class_options(p: Any) -> None:
    """--classes --filter --tune-background."""
    from ..eval.runner import BACKGROUND_SWEEP, CLASS_SETTINGS
    from ._options import add_filter_option

    p.add_argument(
        "--classes",
        default="all",
        choices=CLASS_SETTINGS,
        help="class names of each image's query (default all: every dataset class, true open vocabulary; "
        "gt-labels: the image's ground-truth labels, the papers' weakly supervised setting, an oracle; "
        "reported as such)",
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


#: Library arguments of `evaluate` / `OutputOptions` -> their flags (`flag_message` knows the rest).
_EVAL_FLAGS = {
    "save_predictions": "--save-predictions",
    "name": "--name",
    "background_class": "--background-class",
    "split": "--split",
}


def _fail(message: Any, code: int = 2) -> int:
    import re

    from ._options import fail, flag_message

    text = re.sub(r"`([a-z_]+)`", lambda m: _EVAL_FLAGS.get(m.group(1), m.group(0)), str(message))
    return fail("eval", flag_message(text), code)


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


@dataclasses.dataclass(frozen=True)
class _Setup:
    """What the flags ask for, checked before any model is loaded."""

    spec: Any
    overrides: dict[str, Any]
    config: Any
    resources: dict[str, Any]
    class_filter: Any
    dataset: Any
    ray_options: Any
    needs_model: bool
    #: the run's settings, as `check_output` and `evaluate` both take them (built once)
    run: dict[str, Any]


def _setup(args: argparse.Namespace) -> _Setup:
    """Check the flags, open the dataset and check the output (`check_output`).

    Raises:
        ValueError / FileNotFoundError: a bad flag or dataset root; FileExistsError: results or
        predictions that would be replaced; ImportError: --engine ray without Ray.
    """
    from ..datasets import load_dataset
    from ..eval.protocols import get_protocol
    from ..eval.runner import BACKGROUND_SWEEP, check_output, check_tune_background
    from ..methods import get_method
    from ._labeling import check_filter
    from ._method_options import method_overrides
    from ._options import check_runtime, resource_values

    if not args.dataset or (not args.root and args.dataset != "synthetic"):
        raise ValueError("`--dataset` and `--root` are required (or use --compare).")
    if args.dataset == "synthetic" and args.root is not None:
        raise ValueError("--dataset synthetic is generated, it has no --root; leave --root out.")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"`limit` must be a positive integer, got {args.limit}.")
    if args.resume and args.overwrite:
        raise ValueError("--resume continues the results file and --overwrite discards it; give one of them.")
    output = _output_options(args)
    spec = get_method(args.method)
    sweep = check_tune_background(spec, BACKGROUND_SWEEP if args.tune_background else None)
    overrides = method_overrides(args, spec.name, args._owners)
    config = spec.make_config(None, **overrides)
    protocol = get_protocol(args.protocol)
    if protocol.query_size is not None and getattr(args, "image_size", None) is not None:
        raise ValueError(
            f"--protocol {protocol.name} fixes the model input at {protocol.query_size} px; "
            "--size applies with --protocol full."
        )
    check_runtime(args)
    resources = resource_values(args)
    class_filter = check_filter(args, spec)
    dataset = load_dataset(args.dataset, args.root, args.split)
    from .batch import engine_options

    ray_options = engine_options(args)
    if ray_options is not None:
        import ray  # noqa: F401
    needs_model = spec.needs_model(config)
    engine = _engine_options(args, ray_options, needs_model)
    run = {
        "protocol": args.protocol,
        "matching": args.matching,
        "background_class": args.background_class,
        "classes": args.classes,
        "tune_background": sweep,
        "limit": args.limit,
        "seed": args.seed,
        "engine": engine,
        "output": output,
    }
    check_output(dataset, spec.name, **run)  # folders, results file and predictions, before any model loads
    return _Setup(spec, overrides, config, resources, class_filter, dataset, ray_options, needs_model, run)


def _output_options(args: argparse.Namespace) -> Any:
    """The `OutputOptions` of --out --name --resume --overwrite --save-predictions --no-progress."""
    from ..eval import OutputOptions

    return OutputOptions(
        out_dir=args.out,
        name=args.name,
        resume=args.resume,
        overwrite=args.overwrite,
        save_predictions=args.save_predictions,
        progress=not args.no_progress,
    )


def _engine_options(args: argparse.Namespace, ray_options: Any, needs_model: bool) -> Any:
    """The `EngineOptions` of --engine --batch-size and the Ray flags (with ray, each actor loads
    its own model)."""
    from ..eval import EngineOptions

    loader = _actor_loader(args) if needs_model and ray_options is not None else None
    return EngineOptions(
        engine=args.engine, batch_size=args.batch_size, ray_options=ray_options, backbone_loader=loader
    )


def _actor_loader(args: argparse.Namespace) -> Any:
    """A picklable zero-argument callable each Ray actor loads its own model with."""
    import functools

    from ._options import load_backbone

    model_args = argparse.Namespace(
        model=args.model, model_config=args.model_config, device=args.device, dtype=args.dtype, drop_t5=args.drop_t5
    )
    return functools.partial(load_backbone, model_args)


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
    from ..datasets import load_dataset
    from ..eval import EngineOptions
    from ..eval.render import render_report
    from ..eval.runner import BACKGROUND_SWEEP
    from ..methods import get_method
    from ._method_options import method_overrides

    try:
        if not args.dataset or (not args.root and args.dataset != "synthetic"):
            raise ValueError("`--dataset` and `--root` are required (or use --compare).")
        if args.resume or args.overwrite or args.save_predictions:
            raise ValueError("--render-only scores nothing; leave out --resume, --overwrite and --save-predictions.")
        spec = get_method(args.method)
        report = render_report(
            load_dataset(args.dataset, args.root, args.split),
            spec.name,
            protocol=args.protocol,
            matching=args.matching,
            background_class=args.background_class,
            classes=args.classes,
            tune_background=BACKGROUND_SWEEP if args.tune_background else None,
            limit=args.limit,
            seed=args.seed,
            config_overrides=method_overrides(args, spec.name, args._owners),
            engine=EngineOptions(engine=args.engine),
            output=_output_options(args),
        )
    except (ValueError, FileNotFoundError) as e:
        return _fail(e)
    return _summary(spec, report)


def run(args: argparse.Namespace) -> int:
    """Run ``diffuseg eval``; returns the exit code."""
    if args.compare:
        return _compare(args.compare)
    if args.render_only:
        return _render(args)
    from ..eval import evaluate
    from ..eval.store import ResumeMismatchError
    from ._labeling import build_filter, load_label_models
    from ._options import load_backbone, make_generator

    try:
        setup = _setup(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        return _fail(e)
    except ImportError:
        return _fail("--engine ray needs Ray: pip install 'diffuseg[ray]'.")
    if setup.ray_options is None and args.threads is not None:  # the local engine's torch threads
        import torch

        torch.set_num_threads(args.threads)

    backbone = None
    model_id = None
    if setup.needs_model:
        try:
            backbone = load_backbone(args)
        except (OSError, ValueError) as e:
            return _fail(f"cannot load the model: {e}")
        model_id = getattr(backbone, "name", None) or args.model
    # --seed: each image's noise from its own generator, seeded from (--seed, image id), on any
    # engine; without it the local engine draws from one randomly seeded generator
    generator = make_generator(args.seed, args.device) if setup.needs_model else None
    try:
        load_label_models(args, setup.resources)
        class_filter = build_filter(args, setup.class_filter, setup.resources, setup.spec)
    except (OSError, ValueError) as e:
        return _fail(e)
    try:
        report = evaluate(
            setup.dataset,
            setup.spec.name,
            backbone=backbone,
            model_id=model_id,
            config_overrides=setup.overrides,
            resources=setup.resources,
            class_filter=class_filter,
            generator=generator,
            **setup.run,
        )
    except (FileExistsError, ResumeMismatchError, ValueError, ConnectionError) as e:
        return _fail(str(e).replace("`address`", "--address"))
    except RuntimeError as e:  # the Ray pipeline broke (WorkerDiedError)
        return _fail(e)
    except OSError as e:  # a results or prediction file could not be written (a full disk...)
        return _fail(f"{e}; the images scored so far are kept: rerun with --resume to finish.", code=1)
    return _summary(setup.spec, report)
