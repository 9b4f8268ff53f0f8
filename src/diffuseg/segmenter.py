"""`Segmenter`: queries in, `Segmentation` out, for any registered method.

The path of one image: the caller builds a `Query` (the CLI from a file, the eval runner from
a dataset sample and its protocol); the method plans a `Pass` for it; queries whose passes
share a batch key are preprocessed and run through the backbone together (``batch_size`` per
call); each query's rows of the recorded `Features` go to the method's ``segment``. Features are
cached per pass and image, so re-segmenting with other post-processing settings runs no model.

One bad query (unreadable file, image too small, a pass the model rejects) fails alone: with
``return_errors=True`` its slot in the result list holds the exception.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .backbone.backbone import DiffusionBackbone
from .backbone.features import Features
from .imageio import ImageInput, ImageLoadError, as_pil, preprocess, stack_batch
from .memory import check_memory
from .methods import MethodSpec, get_method
from .ops.noise import per_item_generators
from .plan import Pass, Query
from .segmenter_items import Item, as_queries, as_query, check_arguments, image_digest
from .types import Segmentation
from .windowed import WindowScores, check_windowed, crop_queries, stitched

__all__ = ["Segmenter", "as_query"]

logger = logging.getLogger(__name__)


class Segmenter:
    """Segment images with one method on one backbone.

    Args:
        backbone: the diffusion model, loaded (`diffuseg.backbone.load_backbone`); may be None
            for methods that need only the image.
        method: registry name (see `diffuseg.methods.list_methods()`) or a `MethodSpec`.
        batch_size: images per model call.
        resources: the method's extra models by name (`MethodSpec.resources`): loaded objects,
            or strings (path / hub id) given to the resource's loader.
        device: where string resources are loaded (default: the backbone's device, else "cpu").
        preset: the model family whose documented preset applies (`MethodSpec.presets`), one
            of `diffuseg.backbone.backbone.FAMILIES`; default the backbone's `family`; "" = none
            (the paper's defaults).
        class_filter: which of a query's classes the method gets to see: None (all of them), a
            name of `diffuseg.labeling.filters.FILTERS` or a filter object
            (``filter(backbone, image, classes, generator, caption) -> FilterResult``). Each
            segmentation's ``meta["class_filter"]`` records what was kept.
        probe: a `Query` without an image that stands for the queries to come (their class
            names and caption): the dry plan checks it against the model (e.g. the class list's
            token budget) before any image is read. Default `MethodSpec.probe_query()`.
        config: the method's config, built by the caller (`MethodSpec.make_config` with this
            model's family) and used as it is, instead of `overrides`.
        **overrides: config fields to change (on top of the preset).

    Example:
        >>> seg = Segmenter(backbone, "diffseg", kl_thresholds=(0.9, 0.9, 0.9))
        >>> result = seg("photo.jpg")                        # one UNet pass
        >>> result2 = seg.resegment(num_anchors_per_side=8)  # no UNet pass
    """

    def __init__(
        self,
        backbone: DiffusionBackbone | None,
        method: str | MethodSpec,
        *,
        batch_size: int = 1,
        resources: Mapping[str, Any] | None = None,
        device: str | torch.device | None = None,
        preset: str | None = None,
        class_filter: Any = None,
        probe: Query | None = None,
        config: Any = None,
        **overrides: Any,
    ) -> None:
        self.spec = get_method(method)
        check_arguments(backbone, resources, preset, probe)
        self.probe = probe if probe is not None else self.spec.probe_query()
        if isinstance(class_filter, str) or class_filter is None:
            from .labeling.filters import make_filter

            class_filter = make_filter(class_filter)
        if class_filter is not None and not callable(class_filter):
            raise ValueError(
                f"`class_filter` must be None, a name of `diffuseg.labeling.filters.FILTERS` or a filter "
                f"object (callable), got {class_filter!r} ({type(class_filter).__name__})."
            )
        if class_filter is not None and backbone is None and getattr(class_filter, "needs_backbone", True):
            raise ValueError("`class_filter` needs a diffusion backbone; got `backbone=None`.")
        self.class_filter = class_filter
        self._filtered: dict[tuple[Any, ...], Any] = {}
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be an int >= 1, got {batch_size!r}.")
        self.batch_size = batch_size
        self.backbone = backbone
        family = preset if preset is not None else getattr(backbone, "family", None)
        preset_overrides = self.spec.preset(family)
        self.preset = {"family": family, "overrides": preset_overrides} if preset_overrides else None
        if config is None:
            config = self.spec.make_config(family, **overrides)
        elif overrides or not isinstance(config, self.spec.config_cls):
            raise ValueError(
                f"`config` must be a {self.spec.config_cls.__name__} built by the caller "
                f"(`MethodSpec.make_config`), without further overrides; got {type(config).__name__}"
                f"{' and ' + str(sorted(overrides)) if overrides else ''}."
            )
        self.config = config
        self.resources = self._load_resources(resources or {}, device)
        self.model_calls = 0
        self._cache: dict[tuple[Any, ...], Features] = {}
        self._last_queries: list[Query] | None = None
        self._check()

    # ------------------------------------------------------------------ configuration
    def _load_resources(self, given: Mapping[str, Any], device: str | torch.device | None) -> dict[str, Any]:
        declared = {r.name: r for r in self.spec.resources}
        unknown = sorted(set(given) - set(declared))
        if unknown:
            raise ValueError(
                f"`resources` {unknown} are not used by method {self.spec.name!r}; "
                f"it takes {sorted(declared) or 'none'}."
            )
        out: dict[str, Any] = {}
        for name, res in declared.items():
            value = given.get(name)
            if value is None and res.default is not None:
                value = res.default(self.backbone)
            if value is None:
                if res.required:
                    raise ValueError(
                        f"method {self.spec.name!r} needs the resource {name!r} ({res.description}); "
                        f"give it in `resources` under the name {name!r}."
                    )
                continue
            if isinstance(value, str):
                if res.load is None:
                    raise ValueError(
                        f"resource `{name}` of method {self.spec.name!r} takes a loaded object, not {value!r}."
                    )
                if device is None:
                    device = self.backbone.device if self.backbone is not None else "cpu"
                dtype = self.backbone.dtype if self.backbone is not None else None
                value = res.load(value, device, dtype)
            out[name] = value
        return out

    def _check_pass(self, pass_: Pass) -> None:
        """Validate a pass against the model (before any image is read or model run)."""
        if not pass_.uses_model:
            return
        if self.backbone is None:
            raise ValueError(f"method {self.spec.name!r} needs a diffusion backbone; got `backbone=None`.")
        self.backbone.check_timestep(pass_.timestep)
        multiple = self.backbone.size_multiple
        if pass_.size is not None and pass_.size % multiple:
            raise ValueError(f"`image_size` must be a multiple of {multiple} for this model, got {pass_.size}.")

    def _check(self) -> None:
        """A dry plan of `probe`: the config's pass must suit the backbone before any image is
        read (the memory check assumes a square image, the largest input at that size)."""
        pass_ = self.spec.plan(self.config, self.probe, self.backbone, self.resources)
        self._check_pass(pass_)
        if self.probe.window is not None:
            check_windowed(self.spec, self.probe.window, getattr(self.backbone, "size_multiple", None))
        elif pass_.uses_model:
            side = pass_.size or self.backbone.native_size
            check_memory(self.backbone, self.spec, self.batch_size, pass_, (side, side))

    def configure(self, **overrides: Any) -> Segmenter:
        """Change config fields in place (validated; the config is unchanged on error); returns self."""
        self.spec.check_fields(overrides)
        new = dataclasses.replace(self.config, **overrides)
        if new == self.config:
            return self  # checked when it was set
        old, self.config = self.config, new
        try:
            self._check()
        except ValueError:
            self.config = old
            raise
        return self

    # ------------------------------------------------------------------ model work
    def _prepare(self, index: int, query: Query) -> Item:
        if query.image is None:
            raise ValueError("`query.image` is None; give an image to segment.")
        pass_ = self.spec.plan(self.config, query, self.backbone, self.resources)
        self._check_pass(pass_)
        if pass_.uses_model:
            pixels, metas = self.backbone.preprocess([query.image], pass_.size, pass_.resize_mode)
            if query.window is None:  # windows are checked at their own size (`_windows`)
                check_memory(self.backbone, self.spec, self.batch_size, pass_, tuple(pixels.shape[-2:]))
            return Item(index, query, pass_, pixels[0], metas[0])
        tensors, metas = preprocess([query.image], pass_.size, pass_.resize_mode, multiple=1, min_side=1)
        return Item(index, query, pass_, tensors[0], metas[0])

    def _windows(self, item: Item) -> list[Item]:
        """`item` itself, or, when its query has a `window`, its windows (`diffuseg.windowed`):
        items of one sub-query whose pixels are views of `item`'s, each with its `box`."""
        if item.query.window is None:
            return [item]
        check_windowed(self.spec, item.query.window, getattr(self.backbone, "size_multiple", None))
        sub, crops = crop_queries(item.query, item.pixels)
        pass_ = self.spec.plan(self.config, sub, self.backbone, self.resources)
        self._check_pass(pass_)
        if pass_.uses_model:
            check_memory(self.backbone, self.spec, self.batch_size, pass_, tuple(crops[0][1].shape[-2:]))
        return [Item(item.index, sub, pass_, pixels, item.meta, box) for box, pixels in crops]

    def _filter(self, query: Query, generator: torch.Generator | None) -> tuple[Query, dict[str, Any]]:
        """`query` with the classes `class_filter` keeps, and the filter's record (cached per
        image and class list, so re-segmenting does not run the filter again)."""
        image = as_pil(query.image)
        key = (hashlib.sha1(image.tobytes()).hexdigest(), image.size, query.classes, query.caption)
        if key not in self._filtered:
            self._filtered[key] = self.class_filter(self.backbone, image, query.classes, generator, query.caption)
        result = self._filtered[key]
        return dataclasses.replace(query, classes=result.kept), result.record()

    def _features(
        self,
        chunk: list[Item],
        generator: torch.Generator | list[torch.Generator] | None,
        refresh: bool,
        cache: dict[tuple[Any, ...], Features],
    ) -> Features:
        pass_ = chunk[0].pass_
        pixels = stack_batch([it.pixels for it in chunk])
        prompts = [p for it in chunk for p in it.pass_.prompts]
        weights = [w for it in chunk for w in it.pass_.row_weights()]
        key = (pass_.batch_key(), tuple(prompts), tuple(weights), tuple(image_digest(it.pixels) for it in chunk))
        if not refresh and key in self._cache:
            logger.debug("re-using the recorded features (no model call)")
            features = self._cache[key]
        elif pass_.sampler is not None:
            features = pass_.sampler(self.backbone, pixels, pass_, self.resources, generator)
            self.model_calls += 1
        elif not pass_.uses_model:
            features = Features(images=pixels)
        else:
            features = self.backbone.extract(
                pixels,
                pass_.request,
                prompts=prompts,
                token_weights=weights if any(weights) else None,
                timestep=pass_.timestep,
                add_noise=pass_.add_noise,
                shared_noise=pass_.shared_noise,
                latent_mode=pass_.latent_mode,
                generator=generator,
                prompts_per_image=len(pass_.prompts),
            )
            self.model_calls += 1
        cache[key] = features
        return features

    def features(
        self, query: Query | ImageInput, generator: torch.Generator | None = None, refresh: bool = False
    ) -> Features:
        """The recorded features of one query (its pass's rows), with its `meta`; of the whole
        model input (a query's `window` is ignored)."""
        item = self._prepare(0, dataclasses.replace(as_query(query), window=None))
        features = self._features([item], generator, refresh, self._cache)
        out = features.rows(0, features.batch_size)
        out.meta = [dict(item.meta) for _ in range(out.batch_size)]
        return out

    # ------------------------------------------------------------------ segmentation
    def segment_batch(
        self,
        queries: Sequence[Query | ImageInput],
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        *,
        return_errors: bool = False,
    ) -> list[Segmentation | Exception]:
        """Segment queries; one `Segmentation` per query, in order.

        Queries whose passes share a batch key run `batch_size` per model call. Labels are at
        the model input size; `meta` records `input_size`, `crop_box` and `model_size` so
        `Segmentation.to_input_frame()` maps them back onto the image as given.

        Args:
            queries: a sequence of `Query` objects or bare images (a (B, ...) array or tensor is
                B images); one image or query on its own is refused: call the segmenter on it.
            generator: randomness for noise: one generator (drawn per model call, in order), or
                one generator per query, each query's noise (and class filter) drawn from its
                own, so a query's result does not depend on the other queries or their order
                (`diffuseg.engine.seeding` seeds them from a global seed and the query's id).
                Batched model calls on CPU/GPU are not bit-identical to single-image calls
                (float summation order), so byte-identical results need equal `batch_size`.
            return_errors: put a failed query's exception (`ValueError`, `ImageLoadError`) in its
                slot and go on; otherwise the first failure is raised after the batch.
        """
        queries = as_queries(queries)
        per_query = per_item_generators(generator, len(queries), "query")
        results: list[Segmentation | Exception | None] = [None] * len(queries)
        groups, filtered, windowed = self._group(queries, per_query, generator, results)
        cache: dict[tuple[Any, ...], Features] = {}
        for items in groups.values():
            for start in range(0, len(items), self.batch_size):
                chunk = items[start : start + self.batch_size]
                t0 = time.perf_counter()
                try:
                    gens = [per_query[it.index] for it in chunk] if per_query is not None else generator
                    features = self._features(chunk, gens, False, cache)
                except ValueError as e:
                    for it in chunk:
                        results[it.index] = e
                    continue
                t1 = time.perf_counter()
                rows = len(chunk[0].pass_.prompts)
                for j, it in enumerate(chunk):
                    own = features.rows(j * rows, (j + 1) * rows)
                    own.meta = [dict(it.meta) for _ in range(rows)]
                    t2 = time.perf_counter()
                    try:
                        if it.box is not None:  # a window: its class scores, stitched below
                            scores = self.spec.score_maps(own, self.config, it.query, self.resources)
                            took = ((t1 - t0) / len(chunk), time.perf_counter() - t2)
                            windowed[it.index][1].append(WindowScores(it.box, scores, *took))
                            continue
                        seg = self.spec.run(own, self.config, it.query, self.resources)
                    except ValueError as e:
                        results[it.index] = e
                        continue
                    seg.timings = {"model": (t1 - t0) / len(chunk), "segment": time.perf_counter() - t2}
                    seg.meta = self._result_meta(it, seg.meta, filtered.get(it.index))
                    results[it.index] = seg
        for i, (canvas, crops) in windowed.items():
            if results[i] is None:  # else one of its windows failed
                seg = stitched(canvas.query, crops, tuple(canvas.pixels.shape[-2:]))
                seg.method, seg.config = self.spec.name, self.config
                results[i] = seg
                seg.meta = self._result_meta(canvas, seg.meta, filtered.get(i))
        self._cache = cache
        self._last_queries = queries
        if not return_errors:
            for r in results:
                if isinstance(r, Exception):
                    raise r
        return results  # type: ignore[return-value]

    def _group(
        self, queries: list[Query], per_query: list[torch.Generator] | None, generator: Any, results: list[Any]
    ) -> tuple[dict[tuple[Any, ...], list[Item]], dict[int, dict[str, Any]], dict[int, tuple[Item, list[Any]]]]:
        """Filter, plan and preprocess each query (a failure goes into its slot of `results`).

        Returns:
            The items (whole inputs, or windows of them) by model-call group (batch key and
            pixel shape), in query order; the class filter's record per query; per windowed
            query, its whole-input item and an empty list for its windows' `WindowScores`.
        """
        groups: dict[tuple[Any, ...], list[Item]] = {}
        filtered: dict[int, dict[str, Any]] = {}
        windowed: dict[int, tuple[Item, list[WindowScores]]] = {}
        for i, query in enumerate(queries):
            try:
                if self.class_filter is not None and query.classes:
                    own = per_query[i] if per_query is not None else generator
                    query, filtered[i] = self._filter(query, own)
                item = self._prepare(i, query)
                parts = self._windows(item)
            except (ValueError, ImageLoadError) as e:
                results[i] = e
                continue
            if item.query.window is not None:
                windowed[i] = (item, [])
            for part in parts:
                groups.setdefault((part.pass_.batch_key(), tuple(part.pixels.shape)), []).append(part)
        return groups, filtered, windowed

    def _result_meta(self, item: Item, own: dict[str, Any], class_filter: dict[str, Any] | None) -> dict[str, Any]:
        """A result's `meta`, composed here and nowhere else: the image's frame (input size, crop
        box, model size), the method's own facts, the query's id, the model and its preset, the
        class filter's record, the frame the labels are in (``"model"``;
        `Segmentation.in_input_frame` makes it ``"input"``), then the caller's `Query.meta`."""
        return {
            **item.meta,
            **own,
            "id": item.query.id,
            "model": getattr(self.backbone, "name", None),
            "preset": self.preset,
            **({"class_filter": class_filter} if class_filter is not None else {}),
            "frame": "model",
            **item.query.meta,
        }

    def __call__(
        self, image: Query | ImageInput, generator: torch.Generator | None = None, **overrides: Any
    ) -> Segmentation:
        """Segment one image or query; `overrides` change config fields first (see `configure`)."""
        if overrides:
            self.configure(**overrides)
        return self.segment_batch([image], generator=generator)[0]  # type: ignore[return-value]

    def resegment(self, **overrides: Any) -> list[Segmentation] | Segmentation:
        """Segment the last queries again with changed settings.

        Re-uses the recorded features when the changed fields leave the passes unchanged.
        Returns one `Segmentation` if the last call segmented one query, else a list.
        """
        if self._last_queries is None:
            raise RuntimeError("nothing to re-segment yet: call the segmenter on an image first.")
        self.configure(**overrides)
        out = self.segment_batch(self._last_queries)
        return out[0] if len(out) == 1 else out  # type: ignore[return-value]
