"""The work of one job, shared by every engine: units, the segmenting worker and the writer.

A `Job` is everything a worker needs to build its own backbone and `Segmenter` (plain data, so
it pickles to Ray actors). `make_units` cuts INPUT's items into units of up to ``batch_size``
in input order; a unit is the images of one `Segmenter.segment_batch` call, on every engine
and in every rerun, so batched model calls see the same images whatever runs them (CPU and GPU
batched calls are not bit-identical to single-image calls: byte-identical outputs need equal
``batch_size``). `Worker` segments a decoded unit, each image with its own generator
(`seeding.image_generator`); `write_outcome` writes one image's outputs atomically.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..outputs import DEFAULT_SAVE, OUTPUTS, check_save, existing_outputs, output_suffixes, write_outputs
from ..settings import SlidingWindow
from .inputs import Item, decode
from .seeding import image_generators, image_seed

__all__ = [
    "Job",
    "Outcome",
    "Worker",
    "check_shared",
    "OUTPUTS",
    "OutputFullError",
    "MAX_PIXELS",
    "make_units",
    "is_done",
    "decode_unit",
    "write_outcome",
    "give_up",
    "CRASH_ENV",
]

logger = logging.getLogger(__name__)

#: errno values that mean the output folder is full: the run stops instead of failing every image.
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
#: Test hook: ``NAME:ARM_FILE`` makes a worker that segments the image named NAME while the file
#: ARM_FILE exists delete it and exit hard (``os._exit``): one simulated worker loss per arming;
#: an ARM_FILE holding "always" stays, so every worker that tries NAME dies.
CRASH_ENV = "DIFFUSEG_TEST_CRASH_ON"


#: The default `Job.max_pixels`: 64 megapixels (a 9248x6936 photo), about 190 MB decoded.
MAX_PIXELS = 64_000_000


class OutputFullError(OSError):
    """The output folder has no room left (ENOSPC / EDQUOT / EFBIG)."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


@dataclasses.dataclass(frozen=True)
class Job:
    """What to do to every image: method, model and query settings (plain data).

    Attributes:
        method: registry name of the method.
        overrides: config fields the user set.
        seed: the run's seed; image noise comes from ``image_seed(seed, item.name)``.
        batch_size: images per `segment_batch` call (one unit).
        model, model_config, device, dtype, drop_t5: the backbone, as the CLI's --model ... flags.
        classes: the query's class names (parsed), or () for none.
        caption: the query's caption, or None.
        resources: the method's extra models by name (path / hub id strings).
        class_filter: a name of `diffuseg.labeling.filters.FILTERS`, or None.
        label_device: device of the labelling models (None: `device`).
        out_dir: output folder.
        threads: torch threads per worker (None: torch's default).
        needs_model: whether the method's passes run the diffusion model (the CLI's
            `MethodSpec.needs_model` of the user's settings; False: no backbone is loaded).
        save: the kinds of output file per image (`diffuseg.outputs.check_save`).
        max_pixels: largest image read (width x height; the size comes from the file's header,
            before decoding), or None for no limit.
        window: sliding-window inference for every image (`diffuseg.plan.Query.window`), or None.
    """

    method: str
    out_dir: str
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    seed: int = 0
    batch_size: int = 1
    model: str | None = None
    model_config: str | None = None
    device: str = "cpu"
    dtype: str | None = None
    drop_t5: bool = False
    classes: tuple[Any, ...] = ()
    caption: str | None = None
    resources: dict[str, str] = dataclasses.field(default_factory=dict)
    class_filter: str | None = None
    label_device: str | None = None
    threads: int | None = None
    needs_model: bool = True
    save: tuple[str, ...] = DEFAULT_SAVE
    max_pixels: int | None = MAX_PIXELS
    window: SlidingWindow | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "save", check_save(self.save))
        if self.max_pixels is not None and (
            isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int) or self.max_pixels < 1
        ):
            raise ValueError(f"`max_pixels` must be a positive int or None, got {self.max_pixels!r}.")


@dataclasses.dataclass
class Outcome:
    """One image's result: its segmentation (in the image's frame) and image, or an error."""

    item: Item
    seg: Any = None
    image: Any = None
    error: str | None = None
    seconds: float = 0.0


def is_done(out_dir: str | os.PathLike, name: str, save: Sequence[str] = DEFAULT_SAVE) -> bool:
    """Whether all outputs (`save`'s kinds) of image `name` exist (the JSON is written last)."""
    suffixes = output_suffixes(save)
    return len(existing_outputs(out_dir, name, suffixes)) == len(suffixes)


def make_units(items: Sequence[Item], batch_size: int) -> list[list[Item]]:
    """`items` cut into consecutive units of up to `batch_size` (input order)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an int >= 1, got {batch_size!r}.")
    return [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]


def decode_unit(
    unit: Iterable[Item], max_pixels: int | None = None, wording: Callable[[BaseException], str] = str
) -> list[tuple[Item, Any]]:
    """(item, RGB PIL image or the load error's message, worded by `wording`) per item; images
    over `max_pixels` are refused from their header, before decoding."""
    from ..imageio import ImageLoadError

    out: list[tuple[Item, Any]] = []
    for item in unit:
        try:
            out.append((item, decode(item, max_pixels)))
        except (ImageLoadError, OSError, ValueError) as e:
            text = wording(e)
            out.append((item, text if text.startswith("cannot read") else f"cannot read: {text}"))
    return out


def _backbone(jobs: Sequence[Job]) -> Any:
    """The jobs' backbone (their --model flags are one), loaded once; None if no job needs it."""
    job = next((j for j in jobs if j.needs_model), None)
    if job is None:
        return None
    from ..backbone.load import load_backbone

    return load_backbone(job.model, config=job.model_config, device=job.device, dtype=job.dtype, drop_t5=job.drop_t5)


def _segmenter(job: Job, backbone: Any) -> Any:
    """The job's `Segmenter` on `backbone`, with its resources, class filter and probe query."""
    from ..labeling.stage import build_filter, load_label_models
    from ..methods import get_method
    from ..plan import Query
    from ..segmenter import Segmenter

    spec = get_method(job.method)
    resources: dict[str, Any] = dict(job.resources)
    load_label_models(resources, job.label_device or job.device)
    class_filter = build_filter(
        job.class_filter, resources, {r.name for r in spec.resources}, has_caption=bool(job.caption)
    )
    # the dry plan checks the job's own query (its class list's token budget) before any image
    wanted = job.classes or job.caption or job.window
    probe = Query(classes=job.classes, caption=job.caption, window=job.window) if wanted else None
    return Segmenter(
        backbone, spec, batch_size=job.batch_size, resources=resources, device=job.device,
        class_filter=class_filter, probe=probe, **job.overrides,
    )  # fmt: skip


# What the jobs of one run of several methods must share (they differ in method, settings and folder).
_SHARED = ("model", "model_config", "device", "dtype", "drop_t5", "seed", "batch_size", "classes", "caption",
           "threads", "max_pixels", "label_device", "window")  # fmt: skip


def check_shared(jobs: Sequence[Job]) -> None:
    """Raise ValueError unless `jobs` are one or more jobs that differ only in their method,
    settings, resources and output folder (one run of several methods)."""
    if not jobs or not all(isinstance(j, Job) for j in jobs):
        raise ValueError(f"`job` must be a Job or a non-empty sequence of Job objects, got {jobs!r}.")
    for name in _SHARED:
        values = {repr(getattr(j, name)) for j in jobs}
        if len(values) > 1:
            raise ValueError(f"the jobs of one run must share `{name}`, got {sorted(values)}.")
    if len(jobs) > 1 and jobs[0].window is not None:
        raise ValueError("`window` (sliding-window inference) runs one method at a time; give one method.")
    names = [j.method for j in jobs]
    dirs = [os.path.abspath(j.out_dir) for j in jobs]
    if len(set(names)) < len(names) or len(set(dirs)) < len(dirs):
        raise ValueError(f"the jobs of one run need one method and one output folder each, got {names} in {dirs}.")


class Worker:
    """Builds the jobs' backbone and `Segmenter`s once; segments decoded units.

    Args:
        job: the `Job`, or the jobs of one run of several methods (`check_shared`): their
            passes are shared where they agree (`diffuseg.multi.MultiSegmenter`).
        wording: the message of a failed image's error, as the caller words it (the CLI names
            its flags); default ``str``.

    Raises:
        ValueError, OSError: a model or setting that cannot be used (library arguments named).
    """

    def __init__(self, job: Job | Sequence[Job], wording: Callable[[BaseException], str] = str) -> None:
        import torch

        from ..multi import MultiSegmenter

        self.jobs = [job] if isinstance(job, Job) else list(job)
        check_shared(self.jobs)
        self.job = self.jobs[0]
        if self.job.threads is not None:
            torch.set_num_threads(self.job.threads)
        self.wording = wording
        backbone = _backbone(self.jobs)
        # a job that needs no model gets none, as in a run of its own (its results record no model)
        segmenters = [_segmenter(j, backbone if j.needs_model else None) for j in self.jobs]
        self.segmenter = segmenters[0]
        self.multi = MultiSegmenter(segmenters) if len(segmenters) > 1 else None

    def __call__(self, decoded: Sequence[tuple[Item, Any]]) -> list[Outcome]:
        """Segment one decoded unit (see `decode_unit`); one `Outcome` per item, in order (for
        several jobs, `segment_all`'s outcomes of the first job)."""
        return self.segment_all(decoded)[0]

    def segment_all(self, decoded: Sequence[tuple[Item, Any]]) -> list[list[Outcome]]:
        """One list of outcomes per job (in the order of the jobs), one `Outcome` per item."""
        from ..plan import Query

        _maybe_crash(decoded)
        job = self.job
        failed = [Outcome(item, error=image) for item, image in decoded if isinstance(image, str)]
        good = [(item, image) for item, image in decoded if not isinstance(image, str)]
        if not good:
            return [_in_order(decoded, list(failed)) for _ in self.jobs]
        names = [item.name for item, _ in good]
        queries = [
            Query(
                image=im,
                classes=job.classes,
                caption=job.caption,
                id=item.name,
                meta=_notes(job, item),
                window=job.window,
            )  # fmt: skip
            for item, im in good
        ]
        t0 = time.perf_counter()
        generators = image_generators(job.seed, names, job.device)
        if self.multi is None:
            per_job = [self.segmenter.segment_batch(queries, generator=generators, return_errors=True)]
        else:
            by_method = self.multi.segment_batch(queries, generator=generators, return_errors=True)
            per_job = [by_method[j.method] for j in self.jobs]
        seconds = (time.perf_counter() - t0) / len(good)
        out = []
        for results in per_job:
            outcomes = list(failed)
            for (item, image), seg in zip(good, results, strict=True):
                if isinstance(seg, Exception):
                    outcomes.append(Outcome(item, error=self.wording(seg), seconds=seconds))
                else:
                    outcomes.append(Outcome(item, seg=seg.in_input_frame(), image=image, seconds=seconds))
            out.append(_in_order(decoded, outcomes))
        return out


def _notes(job: Job, item: Item) -> dict[str, Any]:
    """What the job knows of an image, for its result's meta: its source, its seeds and the
    query's class names and caption when given (a rerun compares them: `resume.differences`)."""
    notes: dict[str, Any] = {"source": item.source, "seed": {"run": job.seed, "image": image_seed(job.seed, item.name)}}
    if job.classes or job.caption is not None:
        notes["query"] = {"classes": json.loads(json.dumps(list(job.classes))), "caption": job.caption}
    if job.drop_t5:
        notes["drop_t5"] = True  # the model ran without its T5 text encoder
    return notes


def give_up(decoded: Sequence[tuple[Item, Any]], reason: str) -> list[Outcome]:
    """The outcomes of a unit left out (`ray_engine.MAX_ATTEMPTS`): each item failed with `reason`."""
    return [Outcome(item, error=reason) for item, _ in decoded]


def _in_order(decoded: Sequence[tuple[Item, Any]], outcomes: list[Outcome]) -> list[Outcome]:
    rank = {item.index: k for k, (item, _) in enumerate(decoded)}
    return sorted(outcomes, key=lambda o: rank[o.item.index])


def _maybe_crash(decoded: Sequence[tuple[Item, Any]]) -> None:
    """The `CRASH_ENV` test hook."""
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    name, _, arm = spec.partition(":")
    if not arm or not any(item.name == name for item, _ in decoded):
        return
    try:
        with open(arm) as f:
            always = f.read().strip() == "always"
        if not always:
            os.unlink(arm)  # only one worker disarms it
    except FileNotFoundError:
        return
    logger.warning("test hook %s: worker %d exits on %s", CRASH_ENV, os.getpid(), name)
    os._exit(1)


def write_outcome(out_dir: str | os.PathLike, outcome: Outcome, save: Sequence[str] = DEFAULT_SAVE) -> dict[str, Any]:
    """Write one image's outputs (`save`'s kinds) all or none (`diffuseg.outputs.write_outputs`:
    temp files renamed into place, the JSON last, so an item is done only when all are there);
    returns its log record ``{"index", "name", "source", "status": "ok"|"failed", "error",
    "seconds"}``. An error while saving (a name too long, a label map no PNG holds) fails only
    this item.

    Raises:
        OutputFullError: the folder has no room left (nothing of this item is left behind, and
            it counts as not done).
    """
    item = outcome.item
    record = {"index": item.index, "name": item.name, "source": item.source, "status": "ok", "error": None}
    record["seconds"] = round(outcome.seconds, 6)
    if outcome.error is not None:
        return {**record, "status": "failed", "error": outcome.error}
    try:
        write_outputs(outcome.seg, out_dir, item.name, outcome.image, overwrite=True, save=save)
    except OSError as e:
        if e.errno in _FULL:
            raise OutputFullError(e.errno, f"the output folder {out_dir} is full ({e.strerror})") from e
        return {**record, "status": "failed", "error": f"cannot write: {e}"}
    except Exception as e:  # noqa: BLE001 - a save error (e.g. a label map no PNG holds) fails only its image
        logger.debug("saving %s failed", item.name, exc_info=True)
        return {**record, "status": "failed", "error": f"cannot save: {e}"}
    return record
