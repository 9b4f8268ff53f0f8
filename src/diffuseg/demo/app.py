"""The demo page (Gradio): upload or pick an image, choose a method and its settings, see the
overlay with its legend and the label map, click a pixel to see what the model sees from it,
download the label PNG and the JSON (COCO RLE).

The page is a thin layer over `diffuseg.demo.session.DemoSession`: every control of a method
is generated from its config (`diffuseg.demo.controls`), every message the user sees comes
from the session's errors (`DemoInputError`) or, for an unexpected failure (saving, drawing,
the device), from the exception's own message (the server log keeps its traceback; Gradio
alone would show a bare "Error"), and the queue runs one request at a time.
"""

from __future__ import annotations

import html
import itertools
import logging
from typing import Any

import gradio as gr
from PIL import Image

from ..inspection import METHODS as VIEW_METHODS
from .controls import Control
from .examples import Example
from .session import DemoInputError, DemoSession, methods_by_kind, open_upload

__all__ = ["build_app", "serve", "DEFAULT_METHOD"]

logger = logging.getLogger(__name__)

DEFAULT_METHOD = "diffseg"
_VIEW_HEIGHT = 400  # px of the image boxes
#: Images whose longer side is shorter are shown enlarged by a whole factor (nearest, so pixels
#: stay sharp); the page's click coordinates are divided by it. Gradio never scales an image up.
_DISPLAY_SIDE = 384

_CSS = """
.demo-error { color: #b00020; font-weight: 600; }
.legend { list-style: none; padding: 0; margin: 0; display: flex; flex-wrap: wrap; gap: 4px 14px; }
.legend-item { display: flex; align-items: center; gap: 6px; }
.legend-swatch { width: 14px; height: 14px; border: 1px solid #444; display: inline-block; }
"""


_REQUESTS = itertools.count(1)


def _status(message: str, error: bool = False) -> str:
    """The status line; ``data-request`` numbers the answers, so a page (or a test) can tell a
    new answer from an old one with the same words."""
    seq = next(_REQUESTS)
    if error:
        return f'<div class="demo-error" id="demo-error-text" data-request="{seq}">Error: {html.escape(message)}</div>'
    return f'<div id="status-text" data-request="{seq}">{message}</div>'


def _error(message: str) -> str:
    return _status(message, error=True)


def _failure(what: str, error: Exception) -> str:
    """The status line of a request that failed unexpectedly (saving, drawing, the device): its
    message, never a bare "Error"; the server log keeps the traceback."""
    logger.error("%s failed", what, exc_info=error)
    message = str(error) or type(error).__name__
    if not isinstance(error, ValueError):
        message = f"{type(error).__name__}: {message}"
    return _error(f"{what} failed: {message}")


def _legend_html(legend: list[tuple[int, str | None, tuple[int, int, int], float]]) -> str:
    items = []
    for k, name, rgb, fraction in legend:
        label = html.escape(name) if name is not None else f"segment {k}"
        items.append(
            f'<li class="legend-item" data-label="{k}"><span class="legend-swatch" '
            f'style="background: rgb{rgb}"></span><span class="legend-name">{label}</span> '
            f'<span class="legend-area">{100 * fraction:.1f}%</span></li>'
        )
    return f'<ul class="legend">{"".join(items)}</ul>'


def _enlarged(image: Image.Image, side: int = _DISPLAY_SIDE) -> tuple[Image.Image, int]:
    """`image` scaled by the whole factor k that brings its longer side closest to (not over)
    `side`, and k (1 for images that are large enough)."""
    k = max(1, side // max(image.size))
    return (image.resize((image.width * k, image.height * k), Image.NEAREST) if k > 1 else image), k


#: The headings of a method's two kinds of settings (`DemoSession.pass_fields`).
_PASS_HEADING = "**Model pass**: a change runs the model again"
_POST_HEADING = "**Post-processing**: a change re-segments the cached features, without a model pass"


def _settings(controls: list[Control], pass_fields: frozenset[str]) -> list[tuple[Control, Any]]:
    """A method's controls as components, post-processing first (the settings one tries most),
    each kind under its heading; returns (control, component) pairs."""
    out = []
    for heading, part in (
        (_POST_HEADING, [c for c in controls if c.name not in pass_fields]),
        (_PASS_HEADING, [c for c in controls if c.name in pass_fields]),
    ):
        if part:
            gr.Markdown(heading)
            out += [(c, _component(c)) for c in part]
    return out


def _picture(label: str, elem_id: str) -> Any:
    """An output picture of the page (PIL, not editable, `_VIEW_HEIGHT` high)."""
    return gr.Image(label=label, type="pil", interactive=False, elem_id=elem_id, height=_VIEW_HEIGHT)


def _component(control: Control) -> Any:
    common = {"label": control.label, "info": control.info or None, "elem_id": f"{control.method}-{control.name}"}
    if control.kind == "checkbox":
        return gr.Checkbox(value=control.default, **common)
    if control.kind == "dropdown":
        return gr.Dropdown(choices=list(control.choices or ()), value=control.default, **common)
    if control.kind == "number":
        return gr.Number(value=control.default, precision=0 if control.integer else None, **common)
    return gr.Textbox(value=control.default, max_lines=1, **common)


def build_app(session: DemoSession, examples: dict[str, Example]) -> gr.Blocks:
    """The page for `session`, offering `examples` by name."""
    groups = methods_by_kind()
    choices = [(f"{name} ({kind})", name) for kind, names in groups.items() for name in names]
    with gr.Blocks(title="diffuseg demo", analytics_enabled=False) as app:
        family = f" (family `{session.family}`: its presets are the defaults below)" if session.family else ""
        gr.Markdown(
            f"## diffuseg: segmentation from a text-to-image diffusion model\nModel: `{session.model_name}`{family}"
        )
        gr.HTML(_error(session.load_error) if session.load_error else "", elem_id="model-error")
        image_state = gr.State(None)  # (PIL image, name) of the current input
        scale_state = gr.State(1)  # the enlargement of the overlay shown (`_enlarged`)
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Upload an image", file_count="single", type="filepath", elem_id="upload")
                example = gr.Dropdown(
                    choices=list(examples), value=None, label="... or pick an example", elem_id="example"
                )
                preview = gr.Image(label="Input", type="pil", interactive=False, elem_id="input-preview", height=240)
                method = gr.Dropdown(choices=choices, value=DEFAULT_METHOD, label="Method", elem_id="method")
                classes = gr.Textbox(
                    label="Classes (open-vocabulary methods; names for DiffSeg / DiffCut segments)",
                    placeholder="cat, sofa, tv|monitor   (or dataset:voc21)",
                    elem_id="classes",
                )
                also = gr.Dropdown(
                    choices=choices,
                    value=[],
                    multiselect=True,
                    label="Also run (their model passes are shared where they agree; each with its settings below)",
                    elem_id="also",
                )
                run = gr.Button("Segment", variant="primary", elem_id="segment")
                method_groups: dict[str, Any] = {}
                controls: dict[str, list[tuple[Control, Any]]] = {}
                for name in (n for names in groups.values() for n in names):
                    with gr.Accordion(
                        f"{name} settings", open=name == DEFAULT_METHOD, visible=name == DEFAULT_METHOD
                    ) as group:
                        controls[name] = _settings(session.controls(name), session.pass_fields(name))
                    method_groups[name] = group
            with gr.Column(scale=2):
                status = gr.HTML("", elem_id="status")
                with gr.Row():
                    overlay = _picture("Overlay: click a pixel to see what the model sees from it", "overlay")
                    label_map = _picture("Label map", "label-map")
                legend = gr.HTML("", elem_id="legend")
                others = gr.Gallery(label="The other methods (overlays)", visible=False, elem_id="others", columns=3)
                downloads = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="downloads")
                view = gr.Radio(list(VIEW_METHODS), value="diffseg", label="Pixel view", elem_id="view")
                inspected = _picture("Pixel view: the image and the map of the clicked pixel", "inspect")

        all_controls = [comp for pairs in controls.values() for _, comp in pairs]

        def settings_of(data: dict[Any, Any], name: str) -> dict[str, Any]:
            return {c.name: data[comp] for c, comp in controls.get(name, [])}

        def on_upload(path: str | None) -> tuple[Any, Any, str]:
            if path is None:
                return None, None, ""
            try:
                image = open_upload(path, session.max_pixels)
            except DemoInputError as e:
                return None, None, _error(str(e))
            from pathlib import Path

            return (image, Path(path).stem or "image"), image, ""

        def on_example(name: str | None, current: str) -> tuple[Any, Any, str, str]:
            if not name or name not in examples:
                return gr.update(), gr.update(), current, ""
            ex = examples[name]
            image = ex.image()
            stem = name.rsplit(".", 1)[0].replace(" ", "-")
            return (image, stem), image, ex.classes or current, ""

        def on_method(name: str) -> list[Any]:
            updates = [gr.update(visible=n == name, open=n == name) for n in method_groups]
            return [*updates, gr.update(value=name) if name in VIEW_METHODS else gr.update()]

        def on_segment(data: dict[Any, Any], progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008
            keep = (gr.update(), gr.update(), gr.update(), gr.update(), gr.update(), gr.update())
            current = data[image_state]
            if current is None:
                return (_error("upload an image or pick an example first."), *keep)
            image, stem = current
            name = data[method]
            extra = [m for m in data[also] or [] if m != name]
            progress(0.05, desc="starting")
            try:
                report = lambda f, text: progress(f, desc=text)  # noqa: E731
                if extra:  # one shared pass where the methods agree
                    names = [name, *extra]
                    settings = {m: settings_of(data, m) for m in names}
                    results = session.segment_many(image, names, settings, data[classes], name=stem, progress=report)
                else:  # alone: a post-processing change re-uses the method's cached features
                    one = session.segment(image, name, settings_of(data, name), data[classes], stem, report)
                    results = {name: one}
            except DemoInputError as e:
                return (_error(str(e)), *keep)
            except Exception as e:  # noqa: BLE001 - shown on the page, logged with its traceback
                return (_failure(f"{name} segmentation", e), *keep)
            result = results[name]
            what = "model pass" if result.model_pass else "re-segmented from the cached features (no model pass)"
            also_text = f" (with {', '.join(extra)})" if extra else ""
            text = _status(
                f"{name}: {len(result.legend)} segments in {result.seconds:.2f} s{also_text}, {what}. "
                f'<span id="model-calls">Model passes so far: {result.model_calls}</span>'
            )
            overlay_shown, k = _enlarged(result.overlay)
            files = [str(p) for r in results.values() for p in r.files]
            gallery = [(results[m].overlay, f"{m}: {len(results[m].legend)} segments") for m in extra]
            shown = gr.update(value=gallery, visible=bool(gallery))
            return text, overlay_shown, _enlarged(result.label_map)[0], _legend_html(result.legend), files, k, shown

        def on_select(data: dict[Any, Any], evt: gr.SelectData) -> tuple[Any, str]:
            current = data[image_state]
            if current is None or evt.index is None:
                return gr.update(), _error("segment an image first, then click the overlay.")
            k = data[scale_state] or 1
            x, y = int(evt.index[0]) // k, int(evt.index[1]) // k
            which = data[view]
            try:
                picture = session.inspect(current[0], which, (y, x), settings_of(data, which))
            except DemoInputError as e:
                return gr.update(), _error(str(e))
            except Exception as e:  # noqa: BLE001 - shown on the page, logged with its traceback
                return gr.update(), _failure(f"the {which} pixel view", e)
            return _enlarged(picture, 2 * _DISPLAY_SIDE)[0], _status(f"{which} view of pixel y={y}, x={x}.")

        upload.upload(on_upload, inputs=upload, outputs=[image_state, preview, status])
        example.change(on_example, inputs=[example, classes], outputs=[image_state, preview, classes, status])
        method.change(on_method, inputs=method, outputs=[*method_groups.values(), view])
        run.click(
            on_segment,
            inputs={image_state, method, also, classes, *all_controls},
            outputs=[status, overlay, label_map, legend, downloads, scale_state, others],
            concurrency_id="model",
        )
        overlay.select(
            on_select,
            inputs={image_state, scale_state, view, *all_controls},
            outputs=[inspected, status],
            concurrency_id="model",
        )
    return app


def serve(
    app: gr.Blocks,
    session: DemoSession,
    host: str,
    port: int,
    max_file_bytes: int,
    block: bool = True,
) -> None:
    """Queue `app` (one request at a time: never two model passes at once on the device) and
    serve it on `host`:`port`; uploads over `max_file_bytes` are refused by the server."""
    app.queue(default_concurrency_limit=1, max_size=32)
    app.launch(
        server_name=host,
        server_port=port,
        max_file_size=max_file_bytes,
        allowed_paths=[str(session.work_dir)],
        css=_CSS,
        show_error=False,
        quiet=True,
        inbrowser=False,
        share=False,
        prevent_thread_lock=not block,
    )
