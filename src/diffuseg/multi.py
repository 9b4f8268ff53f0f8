"""Several methods on the same images, sharing the model passes where they agree.

Each method plans its own `Pass` for a query. Passes that agree on everything the model call
depends on (input size and framing, timestep, prompts and their weights, noise, latent mode)
and whose recordings can live side by side are merged into one pass that records the union
(`FeatureRequest.__or__`); each method then reads a view of that pass restricted to what it
asked for (`restrict`). Where passes disagree, `share_passes` says why and the fewest passes
that serve every method run.

The results are the ones each method gives on its own, bit for bit:

* recording a layer never changes the model's output (the recorders compute maps beside the
  layer's own processor), so a method's features do not depend on what else is recorded;
* two recordings of the same kind of attention merge only when they select the same layers
  with the same settings (a per-resolution mean over other layers would be another map);
* every pass of a query draws its noise (and its class filter's draws) from a copy of the
  query's generator in the state a run of that method alone would find it in.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .backbone.features import FeatureRequest, Features
from .imageio import ImageLoadError
from .ops.noise import per_item_generators
from .plan import Pass, Query
from .segmenter import Segmenter
from .segmenter_items import Item, as_queries
from .types import Segmentation

__all__ = ["MultiSegmenter", "SharedPlan", "share_passes", "restrict"]

logger = logging.getLogger(__name__)

# Pass fields the model call depends on besides the request: equal in passes that share a call.
_CALL_FIELDS = (
    "size",
    "resize_mode",
    "timestep",
    "prompts",
    "token_weights",
    "add_noise",
    "shared_noise",
    "latent_mode",
)
# Recording settings that apply to every attention map of a pass.
_ATTENTION_SETTINGS = ("normalization", "average_heads", "per_layer")


@dataclasses.dataclass(frozen=True)
class SharedPlan:
    """How several methods' passes for one query are run.

    Attributes:
        groups: (the pass that runs, the methods it serves, in the order given), one per model
            call; an image-only method (no model work) is a group of its own.
        reasons: method -> why it could not join an earlier group (one line per group tried).
    """

    groups: tuple[tuple[Pass, tuple[str, ...]], ...]
    reasons: Mapping[str, tuple[str, ...]]


def _records_attention(request: FeatureRequest) -> bool:
    return bool(request.self_attention or request.cross_attention)


def _disagreement(shared: Pass, new: Pass) -> str | None:
    """Why `new` cannot join the pass `shared` (None when it can)."""
    if not (shared.uses_model and new.uses_model):
        return "one of them runs no model"
    if shared.sampler is not None or new.sampler is not None:
        return "a multi-step sampler runs its own passes"
    for name in _CALL_FIELDS:
        a, b = getattr(shared, name), getattr(new, name)
        if a != b:
            return f"{name} {b!r} differs from {a!r}"
    mine, theirs = new.request, shared.request
    for kind in ("self_attention", "cross_attention"):
        a, b = getattr(theirs, kind), getattr(mine, kind)
        if a and b and a != b:
            return f"it records other {kind.replace('_', '-')} layers ({b!r} vs {a!r})"
    if _records_attention(mine) and _records_attention(theirs):
        for name in _ATTENTION_SETTINGS:
            a, b = getattr(theirs, name), getattr(mine, name)
            if a != b:
                return f"attention {name} {b!r} differs from {a!r}"
    return None


def share_passes(passes: Mapping[str, Pass]) -> SharedPlan:
    """Group methods' passes for one query into the fewest model calls that serve them all.

    Greedy in the order given: each pass joins the first group it agrees with (`_disagreement`),
    else starts a group. Passes that agree pairwise with a group's union agree with each member.

    Args:
        passes: method name -> its pass for the query.

    Returns:
        The `SharedPlan`.
    """
    groups: list[tuple[Pass, list[str]]] = []
    reasons: dict[str, tuple[str, ...]] = {}
    for name, pass_ in passes.items():
        if not pass_.uses_model:  # image-only: nothing to share
            groups.append((pass_, [name]))
            continue
        why = []
        for k, (shared, members) in enumerate(groups):
            reason = _disagreement(shared, pass_)
            if reason is None:
                merged = dataclasses.replace(shared, request=shared.request | pass_.request)
                groups[k] = (merged, [*members, name])
                break
            why.append(f"not with {', '.join(members)}: {reason}")
        else:
            groups.append((pass_, [name]))
            if why:
                reasons[name] = tuple(why)
    return SharedPlan(tuple((p, tuple(m)) for p, m in groups), reasons)


def restrict(features: Features, request: FeatureRequest) -> Features:
    """The view of a shared pass's `features` that one method's `request` would have recorded:
    the attention kinds it asked for and its hidden states (tensors shared, not copied)."""
    return dataclasses.replace(
        features,
        self_attention=dict(features.self_attention) if request.self_attention else {},
        cross_attention=dict(features.cross_attention) if request.cross_attention else {},
        hidden_states={k: v for k, v in features.hidden_states.items() if k in request.hidden_states},
        meta=list(features.meta),
        derived={},
    )


def _copy(generator: torch.Generator | None) -> torch.Generator | None:
    """A generator in `generator`'s current state (None stays None)."""
    if generator is None:
        return None
    twin = torch.Generator(device=generator.device)
    twin.set_state(generator.get_state())
    return twin


@dataclasses.dataclass
class _Call:
    """One query's share of a model call: the pass, and each method's own item."""

    index: int
    pass_: Pass
    items: dict[str, Item]  # method -> its item (its own pass and query)
    filtered: dict[str, dict[str, Any] | None]
    generator: torch.Generator | None


class MultiSegmenter:
    """Segment images with several methods on one backbone, one model pass where they agree.

    Args:
        segmenters: one `Segmenter` per method, all on the same backbone object (or None, for
            image-only methods) and with the same `batch_size`; method names must differ.

    Example:
        >>> segs = [Segmenter(backbone, m) for m in ("diffseg", "diffcut", "maskdiffusion-kmeans")]
        >>> multi = MultiSegmenter(segs)
        >>> results = multi.segment_batch(["a.png", "b.png"])  # {"diffseg": [...], ...}

    Raises:
        ValueError: naming `segmenters` for an empty list, another type, a repeated method,
            different backbones or batch sizes.
    """

    def __init__(self, segmenters: Sequence[Segmenter]) -> None:
        segmenters = list(segmenters)
        if not segmenters or not all(isinstance(s, Segmenter) for s in segmenters):
            raise ValueError(f"`segmenters` must be a non-empty sequence of Segmenter objects, got {segmenters!r}.")
        names = [s.spec.name for s in segmenters]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"`segmenters` name method(s) {repeated} more than once; give each method once.")
        if len({id(s.backbone) for s in segmenters if s.backbone is not None}) > 1:
            raise ValueError(
                "`segmenters` must share one backbone object (one model runs the shared passes); "
                "image-only methods may have none."
            )
        sizes = sorted({s.batch_size for s in segmenters})
        if len(sizes) > 1:
            raise ValueError(f"`segmenters` must have one `batch_size`, got {sizes}.")
        self.segmenters = {s.spec.name: s for s in segmenters}
        self.batch_size = sizes[0]
        self.model_calls = 0
        self._said: set[str] = set()

    def plan(self, query: Query) -> SharedPlan:
        """How `query`'s passes would be shared (a dry plan: no image is read)."""
        return share_passes(
            {n: s.spec.plan(s.config, query, s.backbone, s.resources) for n, s in self.segmenters.items()}
        )

    def _calls(
        self,
        index: int,
        query: Query,
        generator: torch.Generator | None,
        results: dict[str, list],
        own_gen: bool,
    ) -> list[_Call]:
        """`query`'s model calls; a method whose query fails gets its error in `results`.
        With `own_gen` (the query's own generator) every method draws from a copy of it, in
        the state a run of that method alone would find it in; else all draw from `generator`
        in turn."""
        items, filtered = {}, {}
        for name in results:
            seg = self.segmenters[name]
            try:
                own, filtered[name] = query, None
                gen = _copy(generator) if own_gen else generator
                if seg.class_filter is not None and query.classes:
                    own, filtered[name] = seg._filter(query, gen)
                items[name] = (seg._prepare(index, own), gen)
            except (ValueError, ImageLoadError) as e:
                results[name][index] = e
        plan = share_passes({n: it.pass_ for n, (it, _) in items.items()})
        for name, why in plan.reasons.items():
            line = f"{name} runs a model pass of its own: {'; '.join(why)}"
            if line not in self._said:  # once per run, not per image
                self._said.add(line)
                logger.warning(line)
        return [
            _Call(
                index, pass_, {n: items[n][0] for n in members}, {n: filtered[n] for n in members}, items[members[0]][1]
            )
            for pass_, members in plan.groups
        ]

    def segment_batch(
        self,
        queries: Sequence[Query | Any],
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        *,
        return_errors: bool = False,
        methods: Sequence[str] | None = None,
    ) -> dict[str, list[Segmentation | Exception]]:
        """Segment queries with every method; method -> one result per query, in order.

        Arguments as `Segmenter.segment_batch` (with one generator per query, each method's
        results equal those of its own `Segmenter`, bit for bit), and `methods`: only these of
        the segmenters' methods (None: all), in the order the segmenters were given.

        Raises:
            ValueError: naming `methods`, for a name that is not one of the segmenters'.
        """
        queries = as_queries(queries)
        windowed = [i for i, q in enumerate(queries) if q.window is not None]
        if windowed:
            raise ValueError(
                f"`queries`: query {windowed[0]} has a `window`; a MultiSegmenter runs whole inputs only, "
                "segment windowed queries with one `Segmenter` per method."
            )
        per_query = per_item_generators(generator, len(queries), "query")
        if methods is not None and not set(methods) <= set(self.segmenters):
            raise ValueError(f"`methods` {list(methods)} must be among the segmenters' {list(self.segmenters)}.")
        chosen = [n for n in self.segmenters if methods is None or n in methods]
        results: dict[str, list[Any]] = {n: [None] * len(queries) for n in chosen}
        groups: dict[tuple[Any, ...], list[_Call]] = {}
        for i, query in enumerate(queries):
            own = per_query[i] if per_query is not None else generator
            for call in self._calls(i, query, own, results, per_query is not None):
                lead = next(iter(call.items.values()))
                key = (call.pass_.batch_key(), tuple(lead.pixels.shape), tuple(call.items))
                groups.setdefault(key, []).append(call)
        for calls in groups.values():
            for start in range(0, len(calls), self.batch_size):
                self._run_chunk(calls[start : start + self.batch_size], per_query is not None, generator, results)
        if not return_errors:
            for per_method in results.values():
                for r in per_method:
                    if isinstance(r, Exception):
                        raise r
        return results

    def _run_chunk(self, chunk: list[_Call], per_query: bool, generator: Any, results: dict[str, list]) -> None:
        """One model call for `chunk`, then every method of it on its view of the features."""
        names = tuple(chunk[0].items)
        lead = self.segmenters[names[0]]
        shared = [dataclasses.replace(next(iter(c.items.values())), pass_=c.pass_) for c in chunk]
        t0 = time.perf_counter()
        try:
            gens = [c.generator for c in chunk] if per_query else generator
            features = lead._features(shared, gens, False, {})
            self.model_calls += 1
        except ValueError as e:
            for c in chunk:
                for n in names:
                    results[n][c.index] = e
            return
        model_seconds = (time.perf_counter() - t0) / len(chunk)
        rows = len(chunk[0].pass_.prompts)
        for j, call in enumerate(chunk):
            for name, item in call.items.items():
                seg = self.segmenters[name]
                view = restrict(features.rows(j * rows, (j + 1) * rows), item.pass_.request)
                view.meta = [dict(item.meta) for _ in range(rows)]
                t1 = time.perf_counter()
                try:
                    result = seg.spec.run(view, seg.config, item.query, seg.resources)
                except ValueError as e:
                    results[name][call.index] = e
                    continue
                result.timings = {"model": model_seconds, "segment": time.perf_counter() - t1}
                result.meta = seg._result_meta(item, result.meta, call.filtered[name])
                results[name][call.index] = result
