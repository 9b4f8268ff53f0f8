"""``diffuseg demo``: segment in the browser (Gradio, the ``demo`` extra).

* `diffuseg.demo.session`: the model, the segmenters and what a request does (no Gradio);
* `diffuseg.demo.controls`: settings controls generated from the method configs;
* `diffuseg.demo.examples`: the bundled example images, by name;
* `diffuseg.demo.app`: the page (imports Gradio).
"""

from .session import DEFAULT_MAX_PIXELS, DemoInputError, DemoResult, DemoSession

__all__ = ["DemoSession", "DemoResult", "DemoInputError", "DEFAULT_MAX_PIXELS"]
