"""What the demo does, without the web page: load the model once, segment, inspect.

`DemoSession` owns the backbone and one `Segmenter` per method, so a request that changes
only post-processing settings re-segments from the features the last pass recorded (no model
pass; `DemoResult.model_pass` says which happened). All model work runs under one lock: two
requests never run passes at once on the device (the web page's queue also runs one request
at a time). Nothing here imports Gradio; `diffuseg.demo.app` is the page.

Safety: images come in as uploaded bytes (the web server's own temporary upload) or as a
bundled example by name (`diffuseg.demo.examples`); no path typed by a user is opened, and
class lists are parsed as names (``dataset:NAME`` allowed, files not). Images larger than
`max_pixels` are refused before they are decoded.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from ..methods import KINDS, MethodSpec, get_method, list_methods
from ..ops.noise import check_seed
from .controls import Control, method_controls, pass_fields, settings_overrides

__all__ = ["DemoSession", "DemoResult", "DemoInputError", "DEFAULT_MAX_PIXELS", "open_upload", "methods_by_kind"]

logger = logging.getLogger(__name__)

#: Largest upload, in pixels (width x height), unless the demo is started with another limit.
DEFAULT_MAX_PIXELS = 16_000_000
#: Result folders kept on disk for the download buttons (older ones are removed).
_KEEP_RESULTS = 16

Progress = Callable[[float, str], None]
#: What a filled Classes box sets for a method whose segments can be named (DiffSeg, DiffCut).
_NAMING = {"label": "classes"}


class DemoInputError(ValueError):
    """Something the user gave (an upload, a class list, a setting) that the demo cannot use;
    its message is shown on the page."""


def _page_message(error: BaseException) -> str:
    """A library error as the page says it: each backticked config field is named by its
    control's label (`kl_thresholds` -> 'kl thresholds')."""
    return re.sub(r"`([a-z_][a-z0-9_]*)`", lambda m: "'" + m.group(1).replace("_", " ") + "'", str(error))


def methods_by_kind() -> dict[str, list[str]]:
    """Registered method names grouped by `diffuseg.methods.KINDS`, in that order."""
    groups: dict[str, list[str]] = {kind: [] for kind in KINDS}
    for name in list_methods():
        groups[get_method(name).kind].append(name)
    return {kind: names for kind, names in groups.items() if names}


def open_upload(path: str | Path, max_pixels: int) -> Image.Image:
    """Read an uploaded file as RGB, refusing non-images and images over `max_pixels` (the
    size is read from the header, before the pixels are decoded).

    Raises:
        DemoInputError: with a message for the page.
    """
    from ..imageio import to_rgb

    name = Path(path).name
    try:
        with Image.open(path) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise DemoInputError(
                    f"{name} is {width}x{height} = {width * height:,} pixels; this demo takes images of at most "
                    f"{max_pixels:,} pixels (diffuseg demo --max-pixels)."
                )
            im.load()
            from PIL import ImageOps

            return to_rgb(ImageOps.exif_transpose(im))
    except Image.DecompressionBombError:
        raise DemoInputError(f"{name} is far too large (this demo takes at most {max_pixels:,} pixels).") from None
    except (UnidentifiedImageError, SyntaxError, OSError) as e:
        raise DemoInputError(f"{name} is not an image this demo can read (PNG, JPEG, WebP, BMP, TIFF): {e}") from None


@dataclasses.dataclass
class DemoResult:
    """One segmentation as the page shows it.

    Attributes:
        overlay: RGB, the labels' colours over the image, at the image's own size.
        label_map: RGB, the labels' colours alone (the same colours as `overlay`).
        legend: (label id, name or None, RGB, fraction of the image) per segment.
        files: the written ``NAME.labels.png`` and ``NAME.json`` (COCO RLE), for the downloads.
        model_pass: whether this request ran the model (False: re-segmented from cached features).
        seconds: time of the whole request.
        model_calls: model passes the session has run so far.
        segmentation: the `Segmentation`, in the image's frame.
    """

    overlay: Image.Image
    label_map: Image.Image
    legend: list[tuple[int, str | None, tuple[int, int, int], float]]
    files: list[Path]
    model_pass: bool
    seconds: float
    model_calls: int
    segmentation: Any


class DemoSession:
    """The demo's model and segmenters.

    Args:
        load: ``load() -> DiffusionBackbone``; called once, by `load_model`.
        model_name: what the page calls the model.
        max_pixels: largest image accepted (width x height), >= 1.
        seed: seed of each request's noise generator (same image and settings, same result).
        work_dir: where result files for the download buttons go (default: a temporary folder).
    """

    def __init__(
        self,
        load: Callable[[], Any],
        model_name: str,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        seed: int = 0,
        work_dir: str | Path | None = None,
    ) -> None:
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
            raise ValueError(f"`max_pixels` must be an int >= 1, got {max_pixels!r}.")
        check_seed(seed)
        self._load = load
        self.model_name = model_name
        self.max_pixels = max_pixels
        self.seed = seed
        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="diffuseg-demo-"))
        self.backbone: Any = None
        self.load_error: str | None = None
        self._segmenters: dict[str, Any] = {}
        self._controls: dict[str, list[Control]] = {}
        self._pass_fields: dict[str, frozenset[str]] = {}
        self._lock = threading.Lock()
        self._results: collections.deque[Path] = collections.deque()  # result folders, oldest first
        self.active = 0  # requests inside the lock (tests check it never exceeds 1)
        self.max_active = 0

    # ------------------------------------------------------------------ model
    def load_model(self) -> bool:
        """Load the backbone; on failure keep the error (`load_error`) for the page. Returns success."""
        try:
            self.backbone = self._load()
            self.load_error = None
        except Exception as e:  # noqa: BLE001 - any loading failure is shown, the server stays up
            logger.exception("model failed to load")
            self.load_error = f"the model {self.model_name!r} failed to load: {type(e).__name__}: {e}"
        return self.backbone is not None

    @property
    def family(self) -> str | None:
        """The loaded model's family (selects method presets); None before a model is loaded."""
        return getattr(self.backbone, "family", None)

    def controls(self, method: str) -> list[Control]:
        """The settings controls of `method` for the loaded model (defaults: its preset)."""
        if method not in self._controls:
            self._controls[method] = method_controls(get_method(method), self.family)
        return self._controls[method]

    def pass_fields(self, method: str) -> frozenset[str]:
        """The settings of `method` whose change runs the model again (`controls.pass_fields`,
        for the loaded model's defaults, and with class names naming the segments when the
        method can); a change to any other re-segments the cached features. Every setting
        when neither can be planned (no model)."""
        if method not in self._pass_fields:
            from ..plan import Query

            spec = get_method(method)
            cases = [(spec.make_config(self.family), spec.probe_query())]
            if spec.names_segments:  # what a filled Classes box sets (see `segment`)
                cases.append((spec.make_config(self.family, **_NAMING), Query(classes=(("object",),))))
            found = [pass_fields(spec, config, query, self.backbone, {}) for config, query in cases]
            known = [fields for fields in found if fields is not None]
            everything = frozenset(f.name for f in dataclasses.fields(spec.config_cls))
            self._pass_fields[method] = frozenset().union(*known) if known else everything
        return self._pass_fields[method]

    def _segmenter(self, spec: MethodSpec, overrides: Mapping[str, Any]) -> Any:
        """The method's segmenter (made once, kept for its cached features), set to the model's
        preset plus `overrides` (every field is set, so nothing from an earlier request lingers)."""
        from ..segmenter import Segmenter

        config = spec.make_config(self.family, **overrides)
        if spec.name not in self._segmenters:
            needs_model = spec.needs_model(config)
            if needs_model and self.backbone is None:
                raise DemoInputError(self.load_error or "no model is loaded.")
            backbone = self.backbone if needs_model else None
            self._segmenters[spec.name] = Segmenter(backbone, spec, preset=self.family or "", config=config)
            return self._segmenters[spec.name]
        segmenter = self._segmenters[spec.name]
        segmenter.configure(**{f.name: getattr(config, f.name) for f in dataclasses.fields(config)})
        return segmenter

    @contextlib.contextmanager
    def _busy(self) -> Iterator[None]:
        """Model work, one request at a time (`active` counts the requests inside)."""
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            try:
                yield
            finally:
                self.active -= 1

    @staticmethod
    @contextlib.contextmanager
    def _page_errors() -> Iterator[None]:
        """A library `ValueError` becomes a `DemoInputError` in the page's words (`_page_message`)."""
        try:
            yield
        except DemoInputError:
            raise
        except ValueError as e:
            raise DemoInputError(_page_message(e)) from None

    # ------------------------------------------------------------------ requests
    def _request(self, method: str, settings: Mapping[str, Any] | None, classes: str) -> tuple[MethodSpec, Any, dict]:
        """A request's method, class vocabulary and config overrides, checked (`ValueError`)."""
        from ..labeling.vocabulary import DATASET_PREFIX, load_classes, parse_classes

        spec = get_method(method)
        text = (classes or "").strip()
        if spec.needs_classes and not text:
            raise ValueError(
                f"{spec.name} is open-vocabulary: type the class names to look for in the Classes box, "
                "separated by commas (e.g. 'cat, sofa, tv|monitor')."
            )
        # names only: "dataset:NAME" is a list shipped with diffuseg; a file path is never opened
        vocabulary = load_classes(text) if text.startswith(DATASET_PREFIX) else parse_classes(text or None)
        if vocabulary and not (spec.open_vocabulary or spec.names_segments):
            vocabulary = ()  # a baseline has no use for names; ignore the box
        overrides = settings_overrides(self.controls(spec.name), settings or {})
        if vocabulary and spec.names_segments:  # as on the CLI: class names name the segments
            overrides = {**_NAMING, **overrides}
        return spec, vocabulary, overrides

    def _generator(self) -> torch.Generator:
        """Each request's noise: the same for the same seed (same image and settings, same result)."""
        return torch.Generator(device=getattr(self.backbone, "device", "cpu")).manual_seed(self.seed)

    def segment(
        self,
        image: Image.Image,
        method: str,
        settings: Mapping[str, Any] | None = None,
        classes: str = "",
        name: str = "image",
        progress: Progress | None = None,
    ) -> DemoResult:
        """Segment `image` whole, at its own resolution, with `method` and the UI `settings`
        (field name -> control value; only fields that differ from the defaults are applied).

        Raises:
            DemoInputError: unknown method, empty classes for an open-vocabulary method,
                settings or classes the method rejects, no model.
        """
        from ..plan import Query

        report = progress or (lambda fraction, text: None)
        t0 = time.perf_counter()
        with self._page_errors():
            spec, vocabulary, overrides = self._request(method, settings, classes)
            with self._busy():
                segmenter = self._segmenter(spec, overrides)
                calls = segmenter.model_calls
                report(0.2, "segmenting (a model pass unless the features are cached)")
                query = Query(image=image, classes=vocabulary, id=name)
                seg = segmenter.segment_batch([query], generator=self._generator())[0]
                model_pass = segmenter.model_calls > calls
                total = self.model_calls
        report(0.8, "drawing")
        return self._result(seg, image, name, model_pass, time.perf_counter() - t0, total)

    def segment_many(
        self,
        image: Image.Image,
        methods: Sequence[str],
        settings: Mapping[str, Mapping[str, Any]] | None = None,
        classes: str = "",
        name: str = "image",
        progress: Progress | None = None,
    ) -> dict[str, DemoResult]:
        """Segment `image` with several methods, their model passes shared where they agree
        (`diffuseg.multi.MultiSegmenter`); each result equals `segment` with that method alone.
        Each method's files are named ``NAME.METHOD.labels.png`` / ``NAME.METHOD.json``.

        Args:
            methods: method names, each once, in the order the results come back.
            settings: method -> its UI settings (as `segment`'s `settings`).

        Raises:
            DemoInputError: as `segment` (naming the method), an empty list or a repeated method.
        """
        from ..multi import MultiSegmenter
        from ..plan import Query

        report = progress or (lambda fraction, text: None)
        methods = list(methods)
        if not methods or len(set(methods)) < len(methods):
            raise DemoInputError(f"choose one or more different methods, got {methods}.")
        t0 = time.perf_counter()
        with self._page_errors():
            requests = {m: self._request(m, (settings or {}).get(m), classes) for m in methods}
            with self._busy():
                segmenters = [self._segmenter(spec, overrides) for spec, _, overrides in requests.values()]
                multi = MultiSegmenter(segmenters)
                report(0.2, f"segmenting with {len(methods)} methods (shared model passes)")
                by_vocabulary: dict[Any, list[str]] = {}  # a baseline gets no class names
                for m, (_, vocabulary, _) in requests.items():
                    by_vocabulary.setdefault(vocabulary, []).append(m)
                segs = {}
                for vocabulary, members in by_vocabulary.items():
                    query = Query(image=image, classes=vocabulary, id=name)
                    gen = [self._generator()]  # one per query: each method draws as if alone
                    found = multi.segment_batch([query], gen, methods=members, return_errors=True)
                    segs.update({m: found[m][0] for m in members})
                segs = {m: segs[m] for m in methods}
                total = self.model_calls
        report(0.8, "drawing")
        seconds = time.perf_counter() - t0
        out = {}
        for m, seg in segs.items():
            if isinstance(seg, Exception):
                raise DemoInputError(f"{m}: {_page_message(seg)}")
            # NAME.METHOD.labels.png ...: the downloads of several methods tell them apart
            out[m] = self._result(seg, image, f"{name}.{m}", multi.model_calls > 0, seconds, total)
        return out

    def _result(
        self, seg: Any, image: Image.Image, name: str, model_pass: bool, seconds: float, total: int
    ) -> DemoResult:
        """The page's view of one segmentation (files written for the downloads)."""
        seg = seg.in_input_frame()
        files = self._save(seg, image, name)
        counts = torch.bincount(seg.labels.flatten(), minlength=seg.num_segments).tolist()
        area = max(seg.labels.numel(), 1)
        legend = [(k, n, rgb, counts[k] / area) for k, n, rgb in seg.legend()]
        return DemoResult(
            overlay=seg.to_overlay(image, legend=False),
            label_map=seg.to_overlay(image, alpha=1.0, legend=False),
            legend=legend,
            files=files,
            model_pass=model_pass,
            seconds=seconds,
            model_calls=total,
            segmentation=seg,
        )

    @property
    def model_calls(self) -> int:
        """Model passes run so far, over all methods."""
        return sum(s.model_calls for s in self._segmenters.values())  # a shared pass counts once

    def inspect(
        self, image: Image.Image, method: str, point: tuple[int, int], settings: Mapping[str, Any] | None = None
    ) -> Image.Image:
        """`diffuseg inspect`'s picture for pixel `point` = (y, x) of `image`: DiffSeg's
        aggregated self-attention or DiffCut's feature similarity (`method`), from the features
        of `method`'s pass (cached when that method segmented the image last).

        Raises:
            DemoInputError: a method other than diffseg / diffcut, a point off the image, no model.
        """
        from ..inspection import METHODS, view_picture
        from ..plan import Query

        if method not in METHODS:
            raise DemoInputError(f"the pixel view shows {' or '.join(METHODS)}; got {method!r}.")
        y, x = point
        if not (0 <= y < image.size[1] and 0 <= x < image.size[0]):
            raise DemoInputError(f"the point {y},{x} lies outside the {image.size[1]}x{image.size[0]} image.")
        spec = get_method(method)
        with self._page_errors():
            with self._busy():
                segmenter = self._segmenter(spec, settings_overrides(self.controls(method), settings or {}))
                features = segmenter.features(Query(image=image), generator=self._generator())
            return view_picture(image, features, method, (y, x))

    def _save(self, seg: Any, image: Image.Image, name: str) -> list[Path]:
        """Write the result files into a fresh folder (the oldest beyond `_KEEP_RESULTS` go)."""
        out = self.work_dir / uuid.uuid4().hex
        files = seg.save(out, name, sync=False)  # the label PNG and JSON, for this page's downloads only
        self._results.append(out)
        while len(self._results) > _KEEP_RESULTS:
            shutil.rmtree(self._results.popleft(), ignore_errors=True)
        return files
