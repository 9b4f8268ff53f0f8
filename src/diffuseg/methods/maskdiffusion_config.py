"""The settings of maskdiffusion: its config and what the command line shows of it (torch-free).

`diffuseg.methods.maskdiffusion` runs the method; this module holds only its frozen config, so the
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
    check_seed,
    check_text_encoders,
    check_timestep,
)
from .info import MethodInfo

#: How `maskdiffusion-kmeans` picks K without a fixed `k`.
K_RULES = ("silhouette", "query-classes")


@dataclass(frozen=True)
class _PassSettings:
    """What both variants record (one pass serves both).

    Attributes:
        feature_blocks: indices of the UNet up blocks whose outputs are the features (default
            1 and 2: 32x32 and 64x64 on SD 1.x at 512 px, the reference's strides 16 and 8).
        timestep: UNet timestep (the reference's 1-step inversion: t = 0, ``atten.py`` l.12-16).
        image_size: model input side (the longer side); None = the model's native size (512 on
            SD 1.x, as the reference).
        latent_mode: VAE posterior "mean" (the reference's ``latent_dist.mean``) or "sample".
    """

    feature_blocks: tuple[int, ...] = (1, 2)
    timestep: int = 0
    image_size: int | None = None
    latent_mode: str = field(default="mean", metadata={"choices": LATENT_MODES})

    def __post_init__(self) -> None:
        blocks = (self.feature_blocks,) if isinstance(self.feature_blocks, int) else tuple(self.feature_blocks)
        if not blocks or any(isinstance(b, bool) or not isinstance(b, int) or b < 0 for b in blocks):
            raise ValueError(f"`feature_blocks` must be up-block indices >= 0, got {self.feature_blocks!r}.")
        object.__setattr__(self, "feature_blocks", tuple(dict.fromkeys(blocks)))
        check_timestep(self.timestep)
        check_positive(self.image_size, "image_size", integer=True, allow_none=True)
        if self.latent_mode not in LATENT_MODES:
            raise ValueError(f"`latent_mode` must be one of {LATENT_MODES}, got {self.latent_mode!r}.")


@dataclass(frozen=True)
class MaskDiffusionConfig(_PassSettings):
    """Hyperparameters of MaskDiffusion, open vocabulary (defaults: the reference, SD 1.x).

    Attributes:
        template: the prompt; ``{class}`` is replaced by the class names joined with " and "
            (``atten.py`` l.477: ``" and ".join(classes)``).
        attention_levels: which cross-attention levels are read, as indices from the coarsest
            (0) to the finest (the reference's (0, 1): 8x8 and 16x16 on SD 1.x at 512 px,
            ``aggregate_attention(res=16)``, l.439; SDXL's two levels are 32x32 and 64x64).
        background_score: constant score of a "background" class in the argmax, on the scale of
            the scores <f, p_c> in [-1, 1] (not in the reference: Cityscapes has no background).
            Unused without a background class.
        layers: the image->text maps read, as indices in forward order (`LayerMap.select`: on an
            MM-DiT, whose layers share one grid, the i-th joint attention layer); replaces
            `attention_levels` when set. None = `attention_levels` (the paper, on SD's UNet).
        text_encoders: the parts of a diffusion transformer's text axis whose class tokens are
            read, from ("clip", "t5"): SD3's CLIP tokens, its T5 tokens or both (a name's columns
            in both are averaged); FLUX has T5 only, SD3 loaded with ``drop_t5`` CLIP only. None =
            the first part (SD3: CLIP, FLUX: T5; a UNet's only text). With T5 the prompt may run
            to the T5 part's length (more class names fit).
        feature_blocks, timestep, image_size, latent_mode: see `_PassSettings`.
    """

    template: str = "{class}"
    attention_levels: tuple[int, ...] = (0, 1)
    background_score: float = 0.5
    layers: tuple[int, ...] | None = None
    text_encoders: tuple[str, ...] | None = field(default=None, metadata={"choices": TEXT_ENCODERS})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_template(self.template)
        object.__setattr__(self, "layers", check_layers(self.layers))
        object.__setattr__(self, "text_encoders", check_text_encoders(self.text_encoders))
        levels = (self.attention_levels,) if isinstance(self.attention_levels, int) else tuple(self.attention_levels)
        if not levels or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in levels):
            raise ValueError(f"`attention_levels` must be level indices >= 0, got {self.attention_levels!r}.")
        object.__setattr__(self, "attention_levels", tuple(sorted(set(levels))))
        b = self.background_score
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not -1.0 <= b <= 1.0:
            raise ValueError(f"`background_score` must be a number in [-1, 1], got {b!r}.")


@dataclass(frozen=True)
class MaskDiffusionKMeansConfig(_PassSettings):
    """Hyperparameters of unsupervised MaskDiffusion (k-means on the decoder features).

    Attributes:
        k: number of clusters; None = chosen by `k_rule`.
        k_rule: without `k`: "silhouette" (the K in [2, k_max] with the best mean silhouette
            on the features; never the ground truth) or "query-classes" (K = the number of the
            query's classes: with ``diffuseg eval --classes gt-labels`` this is the reference's
            oracle K, the number of ground-truth labels).
        k_max: the largest K the silhouette rule tries.
        seed: seed of the k-means++ generator (the segmentation step gets no generator; the
            result is a function of the features and this seed).
        feature_blocks, timestep, image_size, latent_mode: see `_PassSettings`.
    """

    k: int | None = None
    k_rule: str = field(default="silhouette", metadata={"choices": K_RULES})
    k_max: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self.k, "k", integer=True, allow_none=True)
        if self.k is not None and self.k < 2:
            raise ValueError(f"`k` must be an int >= 2 or None, got {self.k!r}.")
        if self.k_rule not in K_RULES:
            raise ValueError(f"`k_rule` must be one of {K_RULES}, got {self.k_rule!r}.")
        check_positive(self.k_max, "k_max", integer=True)
        if self.k_max < 2:
            raise ValueError(f"`k_max` must be an int >= 2, got {self.k_max!r}.")
        check_seed(self.seed)


INFO = MethodInfo(
    name="maskdiffusion",
    kind="open-vocabulary",
    description="MaskDiffusion (arXiv 2403.11194): unnormalised cross-attention prototypes in UNet decoder "
    "features; needs --classes.",
    config_cls=MaskDiffusionConfig,
)


KMEANS_INFO = MethodInfo(
    name="maskdiffusion-kmeans",
    kind="unsupervised",
    description="MaskDiffusion's unsupervised variant: k-means on UNet decoder features, K by silhouette.",
    config_cls=MaskDiffusionKMeansConfig,
)
