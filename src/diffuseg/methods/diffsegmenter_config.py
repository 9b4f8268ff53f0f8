"""The settings of diffsegmenter: its config and what the command line shows of it (torch-free).

`diffuseg.methods.diffsegmenter` runs the method; this module holds only its frozen config, so the
command line's help and option parsing import no model code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..labeling.spans import check_template
from ..settings import (
    LATENT_MODES,
    TEXT_ENCODERS,
    check_layers,
    check_positive,
    check_text_encoders,
    check_timestep,
)
from ._resources import CAPTIONER
from .info import MethodInfo


@dataclass(frozen=True)
class DiffSegmenterConfig:
    """Hyperparameters of DiffSegmenter (defaults: VCG-team/DiffSegmenter, SD 1.5).

    Attributes:
        template: the class prompt; ``{class}`` is replaced by the class name (voc12 script:
            "a photograph of {c}"; voc10 / coco: "a photography of {c}").
        use_caption: continue each class prompt with the query's caption (", " + caption) when
            it has one (the reference continues the prefix with a BLIP caption).
        emphasis: weight of the class tokens' embeddings (Compel ``++`` = 1.1^2 = 1.21, l.467-485).
        level_weights: weight of each UNet attention level from the coarsest to the finest
            (reference ``weight = [0.3, 0.5, 0.1, 0.1]`` for 8, 16, 32, 64 on SD 1.x, l.425).
            A model with fewer levels uses the first ones (SDXL: 0.3, 0.5).
        refine_iterations: how many times the scores are propagated along the finest
            self-attention (reference: once, l.513); 0 = raw cross-attention.
        background_score: constant score of a "background" class in the argmax, in [0, 1]
            (the reference sweeps 0.30-0.74 on the evaluated split; 0.4 is the centre of its
            notebook's sigmoid(8 (m - 0.4)) sharpening). Unused without a background class.
        timestep: UNet timestep (``times=[100]``, l.424).
        image_size: model input side (the longer side); None = the model's native size (512
            on SD 1.5, as the reference).
        latent_mode: VAE posterior "sample" (the reference's ``posterior.sample()``, l.302) or
            "mean" (its notebook).
        layers: the attention layers read, as indices of the image->text maps in forward order
            (`LayerMap.select`: on an MM-DiT the i-th joint attention layer); their image->image
            maps on the finest grid refine. None = every cross-attention layer and the finest
            self-attention level (the paper, on SD's UNet).
        text_encoders: the parts of a diffusion transformer's text axis whose class tokens are
            read, from ("clip", "t5"): SD3's CLIP tokens, its T5 tokens or both (a name's columns
            in both are averaged); FLUX has T5 only, SD3 loaded with ``drop_t5`` CLIP only. None =
            the first part (SD3: CLIP, FLUX: T5; a UNet's only text). With T5 the prompt may run
            to the T5 part's length (a caption cut at CLIP's budget goes on there).
            Emphasis weighs the first part's tokens only.
    """

    template: str = "a photograph of {class}"
    use_caption: bool = True
    emphasis: float = 1.21
    level_weights: tuple[float, ...] = (0.3, 0.5, 0.1, 0.1)
    refine_iterations: int = 1
    background_score: float = 0.4
    timestep: int = 100
    image_size: int | None = None
    latent_mode: str = field(default="sample", metadata={"choices": LATENT_MODES})
    layers: tuple[int, ...] | None = None
    text_encoders: tuple[str, ...] | None = field(default=None, metadata={"choices": TEXT_ENCODERS})

    def __post_init__(self) -> None:
        check_template(self.template)
        object.__setattr__(self, "layers", check_layers(self.layers))
        object.__setattr__(self, "text_encoders", check_text_encoders(self.text_encoders))
        check_positive(self.emphasis, "emphasis")
        weights = (self.level_weights,) if isinstance(self.level_weights, (int, float)) else self.level_weights
        weights = tuple(weights)
        for w in weights:
            check_positive(w, "level_weights", allow_zero=True)
        if not weights or not any(weights):
            raise ValueError(f"`level_weights` needs at least one weight > 0, got {self.level_weights!r}.")
        object.__setattr__(self, "level_weights", tuple(float(w) for w in weights))
        check_positive(self.refine_iterations, "refine_iterations", integer=True, allow_zero=True)
        b = self.background_score
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not (0.0 <= b <= 1.0):
            raise ValueError(f"`background_score` must be a number in [0, 1], got {b!r}.")
        check_timestep(self.timestep)
        check_positive(self.image_size, "image_size", integer=True, allow_none=True)
        if self.latent_mode not in LATENT_MODES:
            raise ValueError(f"`latent_mode` must be one of {LATENT_MODES}, got {self.latent_mode!r}.")


INFO = MethodInfo(
    name="diffsegmenter",
    kind="open-vocabulary",
    description="DiffSegmenter (arXiv 2309.02773): class-token cross-attention refined by self-attention; "
    "needs --classes.",
    resources=(CAPTIONER,),
    config_cls=DiffSegmenterConfig,
)
