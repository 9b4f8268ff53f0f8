"""Running one segmentation job over many images: on this machine or on a Ray cluster.

A job (`work.Job`) is the method, model and query settings of ``diffuseg batch``; its inputs
(`inputs.Item`) are files or dataset samples; each image's noise comes from a generator seeded
from (global seed, image id) (`seeding`), so results do not depend on the engine, the number of
workers or the order. Work travels in units of up to ``batch_size`` images formed in input
order (`work.make_units`), the same for every engine, so batched model calls see the same
images. Outputs are written atomically; an item is done when all its outputs exist.

Ray is imported only by `ray_engine`, and only when the ``ray`` engine is used.
"""

from __future__ import annotations

#: Where the work runs: ``local`` (this process) or ``ray`` (a Ray cluster, local or remote).
ENGINES = ("local", "ray")

__all__ = ["ENGINES"]
