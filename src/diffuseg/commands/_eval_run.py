"""The run of ``diffuseg eval`` shared by one benchmark and a suite (`diffuseg.commands.eval_suite`):
check the flags and the output before any model loads (`_setup`), load the models once
(`load_models`), score (`run_one`), fail in CLI terms (`_fail`).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

__all__ = ["load_models", "run_one"]


#: Library arguments of `evaluate` / `OutputOptions` -> their flags (`flag_message` knows the rest).
_EVAL_FLAGS = {
    "save_predictions": "--save-predictions",
    "name": "--name",
    "background_class": "--background-class",
    "split": "--split",
    "class_names": "--class-names",
    "suite": "--suite",
    "root": "--root",
}


def _fail(message: Any, code: int = 2) -> int:
    import re

    from ._options import fail, flag_message

    text = re.sub(r"`([a-z_]+)`", lambda m: _EVAL_FLAGS.get(m.group(1), m.group(0)), str(message))
    return fail("eval", flag_message(text), code)


@dataclasses.dataclass(frozen=True)
class _Setup:
    """What the flags ask for, checked before any model is loaded."""

    #: the `MethodSpec` of each method of --method, in order
    specs: tuple[Any, ...]
    #: method name -> the config fields the user set for it
    overrides: dict[str, dict[str, Any]]
    resources: dict[str, Any]
    class_filter: Any
    dataset: Any
    ray_options: Any
    needs_model: bool
    #: the run's settings, as `check_output` and `evaluate` both take them (built once)
    run: dict[str, Any]

    @property
    def spec(self) -> Any:
        """The first (in a run of one method, the only) method's `MethodSpec`."""
        return self.specs[0]


def _methods(args: argparse.Namespace) -> tuple[tuple[Any, ...], dict[str, dict[str, Any]], bool]:
    """The specs of --method (one name or a list), each method's overrides, whether any needs
    the model.

    Raises:
        ValueError: naming --method (an unknown name, a repeat), an option of none of the methods,
            --tune-background, --name or --engine ray with several methods.
    """
    from ..eval.runner import check_tune_background
    from ..eval.settings import BACKGROUND_SWEEP
    from ..methods import get_method
    from ._method_options import method_overrides, parse_methods

    names = parse_methods(args.method)
    if len(names) > 1:
        several = {"--tune-background": args.tune_background, "--name": args.name, "--engine ray": args.engine == "ray"}
        for flag, given in several.items():
            if given:
                raise ValueError(f"{flag} is for one method at a time; --method {args.method} names {len(names)}.")
    specs, overrides, needs_model = [], {}, False
    for name in names:
        spec = get_method(name)
        check_tune_background(spec, BACKGROUND_SWEEP if args.tune_background else None)
        overrides[spec.name] = method_overrides(args, spec.name, args._owners, names if len(names) > 1 else ())
        needs_model = needs_model or spec.needs_model(spec.make_config(None, **overrides[spec.name]))
        specs.append(spec)
    return tuple(specs), overrides, needs_model


def _setup(args: argparse.Namespace, dataset: Any = None, class_names: Any = None) -> _Setup:
    """Check the flags, open the dataset (unless given) and check the output (`check_output`).
    `class_names` (a suite entry's) replaces the names of --class-names.

    Raises:
        ValueError / FileNotFoundError: a bad flag or dataset root; FileExistsError: results or
        predictions that would be replaced; ImportError: --engine ray without Ray.
    """
    from ..datasets import load_dataset, read_class_names_file
    from ..eval.multi_runner import check_outputs
    from ..eval.protocols import get_protocol
    from ..eval.settings import BACKGROUND_SWEEP
    from ._labeling import check_filter
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
    specs, overrides, needs_model = _methods(args)
    protocol = get_protocol(args.protocol or "full")
    if protocol.query_size is not None and getattr(args, "image_size", None) is not None:
        raise ValueError(
            f"--protocol {protocol.name} fixes the model input at {protocol.query_size} px; "
            "--size applies with --protocol full."
        )
    check_runtime(args)
    resources = resource_values(args)
    class_filter = [check_filter(args, spec) for spec in specs][0]
    if class_names is None and args.class_names is not None:
        class_names = read_class_names_file(args.class_names)
    if dataset is None:
        dataset = load_dataset(args.dataset, args.root, args.split)
    from .batch import engine_options

    ray_options = engine_options(args)
    if ray_options is not None:
        import ray  # noqa: F401
    engine = _engine_options(args, ray_options, needs_model)
    run = {
        "protocol": protocol,
        "matching": args.matching,
        "background_class": args.background_class,
        "classes": args.classes,
        "class_names": class_names,
        "tune_background": BACKGROUND_SWEEP if args.tune_background else None,
        "limit": args.limit,
        "seed": args.seed,
        "engine": engine,
        "output": output,
    }
    # folders, results files and predictions, before any model loads
    check_outputs(dataset, [spec.name for spec in specs], **run)
    return _Setup(specs, overrides, resources, class_filter, dataset, ray_options, needs_model, run)


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


def load_models(args: argparse.Namespace, setup: _Setup) -> dict[str, Any] | int:
    """The model, generator, label models and class filter `evaluate` takes for `setup`, or the
    exit code of a failure (printed)."""
    from ._labeling import build_filter, load_label_models
    from ._options import load_backbone, make_generator

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
    return {"backbone": backbone, "model_id": model_id, "class_filter": class_filter, "generator": generator}


def run_one(setup: _Setup, models: dict[str, Any]) -> dict[str, Any] | int:
    """`evaluate` as `setup` says, with `models` (`load_models`); the report (for several methods,
    `evaluate_methods`: method name -> its report), or the exit code of a failure (printed)."""
    from ..eval import evaluate
    from ..eval.multi_runner import evaluate_methods
    from ..eval.store import ResumeMismatchError

    try:
        if len(setup.specs) == 1:
            spec = setup.spec
            return evaluate(setup.dataset, spec.name, config_overrides=setup.overrides[spec.name],
                            resources=setup.resources, **models, **setup.run)  # fmt: skip
        run = {k: v for k, v in setup.run.items() if k != "tune_background"}  # refused by _methods
        names = [spec.name for spec in setup.specs]
        return evaluate_methods(
            setup.dataset, names, config_overrides=setup.overrides, resources=setup.resources, **models, **run
        )
    except (FileExistsError, ResumeMismatchError, ValueError, ConnectionError) as e:
        return _fail(str(e).replace("`address`", "--address"))
    except RuntimeError as e:  # the Ray pipeline broke (WorkerDiedError)
        return _fail(e)
    except OSError as e:  # a results or prediction file could not be written (a full disk...)
        return _fail(f"{e}; the images scored so far are kept: rerun with --resume to finish.", code=1)
