"""Class filters: which of a query's classes are in the image, before a method segments it.

Open-vocabulary segmentation gives every class it is asked about a map, so a class that is not
in the image competes in the argmax and a class left out can never be predicted. A filter keeps
the classes it finds present; the method then sees only those (`Segmenter(class_filter=...)`).

``diffusion`` needs no second model. It scores each candidate with the diffusion model itself,
in one of two ways (`DiffusionFilter.score`):

* ``denoising`` (after Li et al., "Your Diffusion Model is Secretly a Zero-Shot Classifier",
  ICCV 2023): the class prompt's noise-prediction error on the image latent against the empty
  prompt's, on the same noise draws and timesteps; a class whose prompt explains the image
  better than no prompt (lower error) is present. Every prompt of every draw of a timestep runs
  in one UNet batch.
* ``attention``: one pass with all class names in one prompt (DiffSegmenter's t = 100); at each
  image position the class whose tokens draw the most cross-attention (summed over its tokens,
  averaged over layers and resolutions) wins; a class that wins more than `min_area` of the
  image is present. (The classes' total attention mass, thresholded at the uniform share,
  was the other candidate: precision 0.60 / recall 0.70 against 0.74 / 0.78 for the area rule on
  40 scenes of the proving ground's test split, where `min_area` was chosen.)

Neither rule looks at ground truth. A filter that would keep no class keeps them all and says
so (`FilterResult.fell_back`). A class named "background" is never scored and always kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..ops.masks import argmax0
from .settings import FILTERS
from .spans import check_template, class_prompt, joined_prompt, token_spans
from .vocabulary import Vocabulary, background_index

if TYPE_CHECKING:
    from ..backbone.protocol import Backbone

__all__ = ["FILTERS", "DIFFUSION_SCORES", "FilterResult", "DiffusionFilter", "ClipFilter", "make_filter"]

#: How the ``diffusion`` filter scores a class.
DIFFUSION_SCORES = ("denoising", "attention")


@dataclass(frozen=True)
class FilterResult:
    """What a filter decided for one image.

    Attributes:
        kept: the classes kept (a sub-vocabulary of the query's, in its order).
        scores: class display name -> score (higher = more present; the rule's units).
        fell_back: True when no class passed and all were kept.
        filter: the filter's name.
    """

    kept: Vocabulary
    scores: dict[str, float]
    fell_back: bool
    filter: str

    def record(self) -> dict[str, Any]:
        """JSON-ready: the filter, the kept class names, every score, and the fallback flag."""
        return {
            "filter": self.filter,
            "kept": [c[0] for c in self.kept],
            "scores": {k: round(v, 6) for k, v in self.scores.items()},
            "fell_back": self.fell_back,
        }


@dataclass(frozen=True)
class DiffusionFilter:
    """The training-free ``diffusion`` filter (module docstring).

    Attributes:
        score: "attention" (the area each class wins in the cross-attention; the better of the
            two on the proving ground) or "denoising" (error against the empty prompt).
        template: the class prompt for "denoising" (the Diffusion Classifier's "a photo of a {class}").
        timesteps: the timesteps the denoising error is averaged over (spread over the schedule,
            as the Diffusion Classifier's uniform sampling; more cost more).
        draws: noise draws per timestep, shared by every prompt (paired comparison).
        attention_timestep: the timestep of the "attention" pass (DiffSegmenter's 100).
        min_area: the fraction of the image a class must win, strictly, to be kept ("attention").
        image_size: model input side; None = the model's native size.
    """

    score: str = field(default="attention", metadata={"choices": DIFFUSION_SCORES})
    template: str = "a photo of a {class}"
    timesteps: tuple[int, ...] = (100, 300, 500, 700)
    draws: int = 2
    attention_timestep: int = 100
    min_area: float = 0.02
    image_size: int | None = None
    name: str = field(default="diffusion", init=False)
    needs_backbone: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.score not in DIFFUSION_SCORES:
            raise ValueError(f"`score` must be one of {DIFFUSION_SCORES}, got {self.score!r}.")
        check_template(self.template)
        if not self.timesteps or not all(isinstance(t, int) and t >= 0 for t in self.timesteps):
            raise ValueError(f"`timesteps` must be non-negative ints, got {self.timesteps!r}.")
        if (
            isinstance(self.min_area, bool)
            or not isinstance(self.min_area, (int, float))
            or not 0 <= self.min_area <= 1
        ):
            raise ValueError(f"`min_area` must be a fraction in [0, 1], got {self.min_area!r}.")
        if not isinstance(self.draws, int) or self.draws < 1:
            raise ValueError(f"`draws` must be an int >= 1, got {self.draws!r}.")

    def __call__(
        self, backbone: Backbone, image: Any, classes: Vocabulary, generator: Any = None, caption: str | None = None
    ) -> FilterResult:
        """Decide which of `classes` are in `image` (path, PIL image or (3, H, W) tensor in [0, 1])."""
        bg = background_index(classes)
        scored = [k for k in range(len(classes)) if k != bg]
        if not scored:
            return FilterResult(tuple(classes), {}, False, self.name)
        pixels, _ = backbone.preprocess([image], self.image_size, "keep_aspect")
        pixels = pixels.to(backbone.device, backbone.dtype)
        if self.score == "denoising":
            per_class, threshold = self._denoising(backbone, pixels, classes, scored, generator), 0.0
        else:
            per_class = self._attention(backbone, pixels, classes, scored, generator)
            threshold = self.min_area
        scores = {classes[k][0]: float(s) for k, s in zip(scored, per_class, strict=True)}
        keep = {k for k, s in zip(scored, per_class, strict=True) if s > threshold}
        if not keep:
            return FilterResult(tuple(classes), scores, True, self.name)
        kept = tuple(c for k, c in enumerate(classes) if k in keep or k == bg)
        return FilterResult(kept, scores, False, self.name)

    def _denoising(
        self, backbone: Backbone, pixels: torch.Tensor, classes: Vocabulary, scored: list[int], gen: Any
    ) -> list[float]:
        """Per scored class, the best of its names' denoising gains over the empty prompt,
        relative to the empty prompt's error (> 0: present). `pixels` (1, 3, H, W)."""
        tokenizer = backbone.prompt_tokenizer
        rows = [(k, name) for k in scored for name in classes[k]]
        prompts = [""] + [class_prompt(tokenizer, self.template, name) for _, name in rows]
        p, d = len(prompts), self.draws
        text = backbone.encode_prompts(prompts * d)
        z0 = backbone.encode_images(pixels, "mean")  # (1, C, h, w)
        gen_device = gen.device if gen is not None else torch.device("cpu")
        errors = torch.zeros(p, dtype=torch.float64)
        for t in self.timesteps:
            backbone.check_timestep(t)
            noise = torch.randn((d, *z0.shape[1:]), generator=gen, device=gen_device).to(z0.device, z0.dtype)
            noise = noise.repeat_interleave(p, 0)  # draw-major: (D * P, C, h, w)
            z0s = z0.expand(d * p, -1, -1, -1)
            noisy = backbone.add_noise(z0s, noise, t)
            pred = backbone.predict(noisy, t, text, tuple(pixels.shape[-2:]))
            target = backbone.prediction_target(z0s, noise, t)
            err = (pred.float() - target.float()).pow(2).flatten(1).mean(1).view(d, p).mean(0)
            errors += err.double().cpu()
        errors /= len(self.timesteps)
        gain = errors[0] - errors[1:]  # > 0: the class prompt explains the image better than none
        best = {k: -float("inf") for k in scored}
        for (k, _), g in zip(rows, gain.tolist(), strict=True):
            best[k] = max(best[k], g)
        # relative to the empty prompt's error, so the threshold 0 means "explains it better"
        return [best[k] / float(errors[0]) for k in scored]

    def _attention(
        self, backbone: Backbone, pixels: torch.Tensor, classes: Vocabulary, scored: list[int], gen: Any
    ) -> list[float]:
        """Per scored class, the fraction of the image its names win in the cross-attention.
        `pixels` (1, 3, H, W)."""
        import torch.nn.functional as F

        from ..backbone.features import FeatureRequest

        tokenizer = backbone.prompt_tokenizer
        names = [name for k in scored for name in classes[k]]
        owners = torch.tensor([scored.index(k) for k in scored for _ in classes[k]])
        prompt = joined_prompt(tokenizer, self.template, names)
        feats = backbone.extract(
            pixels, FeatureRequest(cross_attention=True), prompts=[prompt], timestep=self.attention_timestep,
            add_noise=True, generator=gen,
        )  # fmt: skip
        spans = token_spans(tokenizer, feats.token_ids[0].tolist(), names)
        maps = feats.by_resolution("cross")  # largest grid first
        grid = next(iter(maps))
        total = torch.zeros((len(names), *grid), dtype=torch.float32)
        for (h, w), cross in maps.items():
            per_name = torch.stack([cross[0][:, pos].float().sum(-1) for pos in spans]).view(1, -1, h, w).cpu()
            total += F.interpolate(per_name, size=grid, mode="bilinear", align_corners=False)[0]
        winner = owners[argmax0(total)]  # (h, w): the class whose tokens draw the most attention
        return [float((winner == j).float().mean()) for j in range(len(scored))]


@dataclass(frozen=True)
class ClipFilter:
    """The ``clip`` and ``caption-clip`` filters (DiffSegmenter's recipe, VCG-team/DiffSegmenter
    issue #2; its code was not released):

    * image: CLIP image-text similarity of each class (templates averaged); a class within
      `image_ratio` of the best class is kept (the reference's 0.97, read as relative to the
      maximum: its lists always hold at least one class);
    * caption (``caption-clip`` only): CLIP text similarity between the caption (the query's,
      else `captioner`'s unconditional caption) and each class name; a class at or above
      `text_threshold` (the reference's 0.8) is kept too (the union of both rules).

    Attributes:
        clip: a `diffuseg.labeling.clip.ClipScorer`.
        use_caption: False = ``clip``, True = ``caption-clip``.
        captioner: ``captioner(image, prefix) -> str`` for images without a caption, or None.
        image_ratio, text_threshold: the thresholds above.
    """

    needs_backbone: ClassVar[bool] = False
    clip: Any
    use_caption: bool = False
    captioner: Any = None
    image_ratio: float = 0.97
    text_threshold: float = 0.8

    def __post_init__(self) -> None:
        if not 0 < self.image_ratio <= 1:
            raise ValueError(f"`image_ratio` must be in (0, 1], got {self.image_ratio!r}.")
        if not -1 <= self.text_threshold <= 1:
            raise ValueError(f"`text_threshold` must be in [-1, 1], got {self.text_threshold!r}.")

    @property
    def name(self) -> str:
        return "caption-clip" if self.use_caption else "clip"

    def __call__(
        self,
        backbone: Backbone | None,
        image: Any,
        classes: Vocabulary,
        generator: Any = None,
        caption: str | None = None,
    ) -> FilterResult:
        """Decide which of `classes` are in `image`; `caption` for ``caption-clip`` (`backbone`
        is unused).

        Raises:
            ValueError: for ``caption-clip`` with neither a caption nor a captioner.
        """
        bg = background_index(classes)
        scored = [k for k in range(len(classes)) if k != bg]
        if not scored:
            return FilterResult(tuple(classes), {}, False, self.name)
        names = [n for k in scored for n in classes[k]]
        owner = [k for k in scored for _ in classes[k]]

        def per_class(values: torch.Tensor) -> dict[int, float]:
            best: dict[int, float] = {}
            for k, v in zip(owner, values.tolist(), strict=True):
                best[k] = max(best.get(k, -float("inf")), v)
            return best

        image_scores = per_class(self.clip.image_similarity(image, names))
        top = max(image_scores.values())
        # relative to the best class; for a negative maximum, "within the ratio" means above it / ratio
        cut = top * self.image_ratio if top >= 0 else top / self.image_ratio
        keep = {k for k, v in image_scores.items() if v >= cut}
        scores = {classes[k][0]: v for k, v in image_scores.items()}
        if self.use_caption:
            if not caption:
                if self.captioner is None:
                    raise ValueError(
                        "`class_filter` 'caption-clip' needs a caption: the query's (CLI: --caption) or a "
                        "captioner's (CLI: --captioner PATH)."
                    )
                caption = self.captioner(image, "")
            text_scores = per_class(self.clip.text_similarity(caption, names))
            keep |= {k for k, v in text_scores.items() if v >= self.text_threshold}
            scores.update({f"{classes[k][0]} (caption)": v for k, v in text_scores.items()})
        kept = tuple(c for k, c in enumerate(classes) if k in keep or k == bg)
        return FilterResult(kept, scores, False, self.name)


def make_filter(name: str | None, clip: Any = None, captioner: Any = None, **settings: Any) -> Any:
    """The filter called `name` (one of `FILTERS`; None or "none" -> None).

    Args:
        clip: a `ClipScorer` for ``clip`` and ``caption-clip``.
        captioner: an optional captioner for ``caption-clip``.
        settings: the filter's own settings (e.g. ``score="denoising"`` for ``diffusion``).

    Raises:
        ValueError: naming `class_filter`, for an unknown name or a missing CLIP model.
    """
    if name is None or name == "none":
        return None
    if name == "diffusion":
        return DiffusionFilter(**settings)
    if name in ("clip", "caption-clip"):
        if clip is None:
            raise ValueError(
                f"`class_filter` {name!r} needs a CLIP model: give `clip` (CLI: --clip PATH or a cached hub id "
                "such as openai/clip-vit-large-patch14; transformers ships the code, the weights are yours)."
            )
        return ClipFilter(clip, use_caption=name == "caption-clip", captioner=captioner, **settings)
    raise ValueError(f"`class_filter` must be one of {FILTERS}, got {name!r}.")
