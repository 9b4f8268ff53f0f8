"""Recording joint attention from diffusion transformers (issue 24): speed and memory.

1. Speed: an SD3-medium-shaped ``SD3Transformer2DModel`` with random weights (speed does not
   depend on weight values) at 512 px (a 64x64 latent: 1024 image tokens, 333 text tokens),
   batch 1, float32 on CPU, ``torch.no_grad()``: a plain forward against the same forward
   inside `record_joint` recording ONE layer (image->image + image->text). Warm-up of each, then
   ``--repeats`` rounds of one of each, which goes first alternating by round; medians, and the
   ratio of the medians (target <= 1.3x). Because that ratio is within the run-to-run noise of a
   shared CPU, the recording's own cost is also measured alone: the layer's attention module
   called on the inputs it gets in the forward, with its own and with the recording processor
   (medians of many calls); the difference is added to the plain forward for a second ratio.
   The recorded forward's output is checked to be the plain one, bit for bit. Memory: the bytes
   the store keeps (the sum of its tensors) against `recording_bytes`, and the peak resident
   memory each forward adds over the RSS before it (Linux VmHWM, reset before each timed
   forward through /proc/self/clear_refs; the largest rise of the rounds; tracemalloc does not
   see torch's CPU allocator).
   The 2B-parameter model is built on the meta device, then given uninitialised CPU storage
   (``to_empty``) filled with seeded N(0, 0.02) weights, zero biases, unit norm scales and the
   real sin-cos position table, instead of diffusers' slow default initialisation.
2. Memory estimate at 1024 px for SD3-medium, SD3.5-large and FLUX.1-dev shapes built on the
   meta device (no weights materialised): parameter bytes in bf16 and fp32, the bytes one
   recorded layer keeps (`recording_bytes`: the head-averaged image->image and image->text blocks
   in float32 plus one score tile) and, for contrast, one layer's full joint attention map
   (heads x L^2 x 4 B). Beside them, measured in a fresh process per family: the tiny SD3,
   SD3.5 and FLUX configs of tests/test_joint_attention.py (their inputs, batch 2), one layer
   recorded: the store's bytes against `recording_bytes` and the peak resident memory.

Configs (checked against diffusers 0.42.1: ``SD3Transformer2DModel`` / ``FluxTransformer2DModel``
defaults, ``loaders/single_file_utils.py`` and ``scripts/convert_sd3_to_diffusers.py``, which
derive num_layers from the checkpoint, heads = num_layers, caption_projection_dim = heads x 64,
pos_embed_max_size = sqrt(pos_embed rows) = 192, qk_norm from ``ln_q``, ``attn2`` layers from the
checkpoint; FLUX-dev adds ``guidance_embeds``):

    ./run python benchmarks/bench_joint_attention.py [--threads 2] [--repeats 5] \\
        [--out docs/joint_attention_benchmark.md]
    ./run python benchmarks/bench_joint_attention.py --quick      # tiny shapes only (smoke run)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

#: SD3-medium (stabilityai/stable-diffusion-3-medium-diffusers): 24 blocks, 24 heads x 64 = 1536.
SD3_MEDIUM: dict[str, Any] = dict(
    sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
    joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
    pos_embed_max_size=192,
)  # fmt: skip
#: SD3.5-large: 38 blocks, 38 heads x 64 = 2432, RMS q/k norms, no ``attn2`` layers (those are
#: SD3.5-medium's, with pos_embed_max_size 384).
SD35_LARGE: dict[str, Any] = dict(
    SD3_MEDIUM, num_layers=38, num_attention_heads=38, caption_projection_dim=2432, qk_norm="rms_norm",
    dual_attention_layers=(),
)  # fmt: skip
#: FLUX.1-dev: 19 dual-stream + 38 single-stream blocks, 24 heads x 128 = 3072, guidance embedding.
FLUX_DEV: dict[str, Any] = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56),
)  # fmt: skip

#: Tiny configs of tests/test_joint_attention.py (8x8 latent, patch 1, 12 text tokens, batch 2).
TINY_GRID, TINY_TEXT, TINY_BATCH = 8, 12, 2
TINY_SD3: dict[str, Any] = dict(
    sample_size=TINY_GRID, patch_size=1, in_channels=4, num_layers=3, attention_head_dim=8, num_attention_heads=4,
    caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=16, out_channels=4, pos_embed_max_size=32,
)  # fmt: skip
TINY_SD35: dict[str, Any] = dict(TINY_SD3, dual_attention_layers=(0, 1), qk_norm="rms_norm")
TINY_FLUX: dict[str, Any] = dict(
    patch_size=1, in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
    joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
)  # fmt: skip

#: name -> (family, config, layer recorded).
MODELS: dict[str, tuple[str, dict[str, Any], str]] = {
    "SD3-medium": ("sd3", SD3_MEDIUM, "transformer_blocks.9.attn"),  # Seg4Diff's layer
    "SD3.5-large": ("sd3", SD35_LARGE, "transformer_blocks.9.attn"),
    "FLUX.1-dev": ("flux", FLUX_DEV, "transformer_blocks.15.attn"),  # ConceptAttention's first layer
    "tiny SD3": ("sd3", TINY_SD3, "transformer_blocks.1.attn"),
    "tiny SD3.5": ("sd3", TINY_SD35, "transformer_blocks.0.attn"),
    "tiny FLUX": ("flux", TINY_FLUX, "single_transformer_blocks.1.attn"),
}
TINY = ("tiny SD3", "tiny SD3.5", "tiny FLUX")


def model_class(family: str) -> type:
    import diffusers

    return diffusers.SD3Transformer2DModel if family == "sd3" else diffusers.FluxTransformer2DModel


def on_meta(family: str, config: dict[str, Any]) -> torch.nn.Module:
    """The model with every parameter and buffer on the meta device: shapes, no storage."""
    with torch.device("meta"):
        return model_class(family)(**config).eval()


def materialise(model: torch.nn.Module, config: dict[str, Any], seed: int = 0, std: float = 0.02) -> None:
    """Give a meta-built model CPU storage and values: N(0, std) weights from a seeded generator,
    zero biases, unit norm scales, and SD3's sin-cos position table recomputed as diffusers does."""
    from diffusers.models.embeddings import PatchEmbed, get_2d_sincos_pos_embed

    model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.ndim == 1 and "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, std, generator=g)
        filled = set()
        for module_name, module in model.named_modules():
            if isinstance(module, PatchEmbed) and module.pos_embed is not None:
                grid = module.pos_embed_max_size or int(module.pos_embed.shape[1] ** 0.5)
                table = get_2d_sincos_pos_embed(
                    module.pos_embed.shape[-1], grid, base_size=module.base_size,
                    interpolation_scale=module.interpolation_scale, output_type="pt",
                )  # fmt: skip
                module.pos_embed.copy_(table.float().unsqueeze(0))
                filled.add(f"{module_name}.pos_embed".lstrip("."))
        unknown = [n for n, _ in model.named_buffers() if n not in filled]
        if unknown:
            raise RuntimeError(f"buffers this benchmark does not know how to fill: {unknown}")


def tokens(family: str, config: dict[str, Any], px: int) -> tuple[int, int, int]:
    """(image tokens N, text tokens T, latent side) of one `px` x `px` image (VAE factor 8):
    SD3 patches the 16-channel latent by `patch_size`; FLUX packs 2x2 latent patches into 64
    channels before its patch-1 embedding. Text: SD3 77 CLIP + 256 T5, FLUX 512 T5."""
    latent = px // 8
    if family == "sd3":
        return (latent // config["patch_size"]) ** 2, 77 + 256, latent
    return (latent // 2) ** 2, 512, latent


def sd3_inputs(config: dict[str, Any], batch: int, latent: int, text: int, seed: int = 1) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch, config["in_channels"], latent, latent, generator=g),
        "encoder_hidden_states": torch.randn(batch, text, config["joint_attention_dim"], generator=g),
        "pooled_projections": torch.randn(batch, config["pooled_projection_dim"], generator=g),
        "timestep": torch.tensor([500.0] * batch),
    }


def flux_inputs(config: dict[str, Any], batch: int, grid: int, text: int, seed: int = 1) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack(torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij"), -1).reshape(-1, 2)
    x = {
        "hidden_states": torch.randn(batch, grid * grid, config["in_channels"], generator=g),
        "encoder_hidden_states": torch.randn(batch, text, config["joint_attention_dim"], generator=g),
        "pooled_projections": torch.randn(batch, config["pooled_projection_dim"], generator=g),
        "timestep": torch.tensor([0.5] * batch),
        "img_ids": torch.cat([torch.zeros(grid * grid, 1), ids.float()], 1),
        "txt_ids": torch.zeros(text, 3),
    }
    if config.get("guidance_embeds"):
        x["guidance"] = torch.tensor([3.5] * batch)
    return x


def proc_kb(field: str) -> int:
    """VmRSS (current) or VmHWM (peak since exec or the last `reset_peak`) in kB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_over(fn) -> tuple[Any, float]:
    """Run `fn`; return its result and the MB its peak resident memory rose over the RSS before
    (NaN where the peak cannot be reset)."""
    if not reset_peak():
        return fn(), float("nan")
    base = proc_kb("VmRSS")
    out = fn()
    return out, (proc_kb("VmHWM") - base) * 1024 / 1e6


def store_bytes(store) -> int:
    return sum(t.numel() * t.element_size() for d in (store.image_to_image, store.image_to_text) for t in d.values())


def joint_heads(model: torch.nn.Module, layer: str) -> int:
    return int(model.get_submodule(layer).heads)


def one_layer(layer: str):
    """A `JointRequest` for the image->image and image->text blocks of `layer`."""
    from diffuseg.backbone.joint_attention import JointRequest

    return JointRequest(image_to_image=(layer,), image_to_text=(layer,))


def layer_inputs(model: torch.nn.Module, layer: str, x: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments `layer`'s attention module gets in one forward of `x`."""
    seen: dict[str, Any] = {}
    module = model.get_submodule(layer)
    hook = module.register_forward_pre_hook(lambda m, a, k: seen.update(k), with_kwargs=True)
    try:
        model(**x)
    finally:
        hook.remove()
    return seen


def timed(fn) -> tuple[Any, float, float, float]:
    """Run `fn` once: (its result, wall seconds, CPU seconds of this process (all threads), MB its
    peak resident memory rose over the RSS before it (NaN where the peak cannot be reset))."""
    reset = reset_peak()
    base = proc_kb("VmRSS")
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    peak = (proc_kb("VmHWM") - base) * 1024 / 1e6 if reset else float("nan")
    return out, wall, cpu, peak


def summary(wall: list[float], cpu: list[float]) -> dict[str, float]:
    """Median and minimum wall time, median CPU time."""
    return {"median": statistics.median(wall), "min": min(wall), "cpu": statistics.median(cpu)}


# -------------------------------------------------------------------------------------------
# 1. speed


def speed(name: str, px: int, repeats: int) -> dict[str, Any]:
    """Plain forward vs forward recording one layer, float32 CPU, batch 1 (see the module doc)."""
    from diffuseg.backbone.joint_attention import record_joint, recording_bytes

    family, config, layer = MODELS[name]
    if family != "sd3":
        raise ValueError("the speed benchmark runs SD3-shaped models")
    t0 = time.perf_counter()
    model = on_meta(family, config)
    materialise(model, config)
    build_s = time.perf_counter() - t0
    n, text, latent = tokens(family, config, px)
    if name in TINY:  # the tests' grid and text, at batch 1
        n, text, latent = TINY_GRID**2, TINY_TEXT, TINY_GRID
    x = sd3_inputs(config, 1, latent, text)
    request = one_layer(layer)
    weights_mb = proc_kb("VmRSS") * 1024 / 1e6
    params = sum(p.numel() for p in model.parameters())
    print(
        f"{name}: {count(params)} parameters, built in {build_s:.1f} s; {where(name, px)} -> {n} image + {text} text "
        f"tokens; RSS {weights_mb:.0f} MB",
        flush=True,
    )

    def plain() -> torch.Tensor:
        return model(**x).sample

    def recorded() -> tuple[torch.Tensor, Any]:
        with record_joint(model, request) as store:
            return model(**x).sample, store

    with torch.no_grad():
        ref, first_plain, _, _ = timed(plain)  # warm-up of each
        (out, store), first_rec, _, _ = timed(recorded)
        print(f"  warm-up: plain {sec(first_plain)} s, recorded {sec(first_rec)} s", flush=True)
        identical = bool(torch.equal(out, ref))
        finite = bool(torch.isfinite(ref).all())
        i2i, i2t = store.image_to_image[layer], store.image_to_text[layer]
        rows = float((i2i.sum(-1) - 1).abs().max())
        kept = store_bytes(store)
        predicted = recording_bytes(n, text, request, batch=1, heads=joint_heads(model, layer))
        shapes = (tuple(i2i.shape), tuple(i2t.shape))
        del out, store, i2i, i2t
        runs: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": [], "peak": []} for k in ("plain", "rec")}
        for r in range(repeats):  # one of each, which goes first alternating by round: drift hits both alike
            order = (("plain", plain), ("rec", recorded))
            for kind, fn in order if r % 2 == 0 else order[::-1]:
                _, wall, cpu, peak = timed(fn)
                for key, value in (("wall", wall), ("cpu", cpu), ("peak", peak)):
                    runs[kind][key].append(value)
            print(
                f"  round {r + 1}: plain {sec(runs['plain']['wall'][-1])} s (CPU {sec(runs['plain']['cpu'][-1])} s), "
                f"recorded {sec(runs['rec']['wall'][-1])} s (CPU {sec(runs['rec']['cpu'][-1])} s)",
                flush=True,
            )
        # The recording's own cost, isolated: the layer's attention call on the inputs it gets in
        # this forward, with its own processor and with the recording one (many calls each).
        kw = layer_inputs(model, layer, x)
        attn = model.get_submodule(layer)
        calls = max(5, 3 * repeats)
        alone: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": [], "peak": []} for k in ("plain", "rec")}
        for kind in ("plain", "rec"):
            with record_joint(model, request) if kind == "rec" else contextlib.nullcontext():
                attn(**kw)  # warm-up
                for _ in range(calls):
                    _, wall, cpu, peak = timed(lambda: attn(**kw))
                    for key, value in (("wall", wall), ("cpu", cpu), ("peak", peak)):
                        alone[kind][key].append(value)
    fwd = {k: summary(v["wall"], v["cpu"]) for k, v in runs.items()}
    lay = {k: summary(v["wall"], v["cpu"]) for k, v in alone.items()}
    added = {s: lay["rec"][s] - lay["plain"][s] for s in ("median", "min", "cpu")}
    result = {
        "name": name,
        "px": px,
        "where": where(name, px),
        "image_tokens": n,
        "text_tokens": text,
        "layer": layer,
        "params": params,
        "forward": fwd,
        "ratio": {s: fwd["rec"][s] / fwd["plain"][s] for s in ("median", "min", "cpu")},
        "plain_all": runs["plain"]["wall"],
        "recorded_all": runs["rec"]["wall"],
        "layer_calls": calls,
        "alone": lay,
        "added": added,
        "isolated_ratio": {s: (fwd["plain"][s] + added[s]) / fwd["plain"][s] for s in ("median", "min", "cpu")},
        "identical": identical,
        "finite": finite,
        "i2i_shape": shapes[0],
        "i2t_shape": shapes[1],
        "row_sum_error": rows,
        "kept_bytes": kept,
        "predicted_bytes": predicted,
        "weights_rss_mb": weights_mb,
        "plain_peak_mb": max(runs["plain"]["peak"]),
        "recorded_peak_mb": max(runs["rec"]["peak"]),
        "layer_plain_peak_mb": max(alone["plain"]["peak"]),
        "layer_recorded_peak_mb": max(alone["rec"]["peak"]),
    }
    print(
        f"  {layer} alone ({calls} calls, median / min wall, median CPU): "
        + "; ".join(f"{k} {sec(v['median'])} / {sec(v['min'])} / {sec(v['cpu'])} s" for k, v in lay.items()),
        flush=True,
    )
    stats = ("median", "min", "cpu")

    def xs(d: dict[str, float]) -> str:
        return " / ".join(f"{d[k]:.3f}x" for k in stats)

    print(
        f"  forwards over {repeats} rounds (median / min wall, median CPU): plain "
        f"{' / '.join(sec(fwd['plain'][k]) for k in stats)} s, recording {layer} "
        f"{' / '.join(sec(fwd['rec'][k]) for k in stats)} s -> ratios {xs(result['ratio'])} (target <= 1.3x); "
        f"plain forward + the layer's added cost: {xs(result['isolated_ratio'])}; output identical: {identical}",
        flush=True,
    )
    return result


# -------------------------------------------------------------------------------------------
# 2. memory


def estimate(name: str, px: int) -> dict[str, Any]:
    """Bytes from shapes alone (meta device): parameters, one recorded layer, one full map."""
    from diffuseg.backbone.joint_attention import joint_layers, recording_bytes

    family, config, layer = MODELS[name]
    model = on_meta(family, config)
    n, text, _ = tokens(family, config, px)
    if name in TINY:
        n, text = TINY_GRID**2, TINY_TEXT
    batch = TINY_BATCH if name in TINY else 1
    heads = joint_heads(model, layer)
    params = sum(p.numel() for p in model.parameters())
    request = one_layer(layer)
    return {
        "name": name,
        "px": px,
        "batch": batch,
        "image_tokens": n,
        "text_tokens": text,
        "attention_layers": len(joint_layers(model)),
        "heads": heads,
        "params": params,
        "bf16_bytes": 2 * params,
        "fp32_bytes": 4 * params,
        "layer": layer,
        "kept_bytes": 4 * batch * n * (n + text),
        "recording_bytes": recording_bytes(n, text, request, batch=batch, heads=heads),
        "full_map_bytes": 4 * batch * heads * (n + text) ** 2,
    }


def tiny_child(name: str) -> None:
    """In a fresh process: build a tiny test config, record one layer, print JSON measurements."""
    from diffuseg.backbone.joint_attention import record_joint, recording_bytes

    family, config, layer = MODELS[name]
    torch.manual_seed(0)
    model = model_class(family)(**config).eval()
    x = (
        sd3_inputs(config, TINY_BATCH, TINY_GRID, TINY_TEXT)
        if family == "sd3"
        else flux_inputs(config, TINY_BATCH, TINY_GRID, TINY_TEXT)
    )
    request = one_layer(layer)

    def recorded():
        with record_joint(model, request) as store:
            return model(**x).sample, store

    with torch.no_grad():
        ref = model(**x).sample  # warm-up of each (first-call allocations)
        recorded()
        after_build_mb = proc_kb("VmRSS") * 1024 / 1e6
        _, plain_peak = peak_over(lambda: model(**x).sample)
        (out, store), rec_peak = peak_over(recorded)
    heads = joint_heads(model, layer)
    print(
        json.dumps(
            {
                "name": name,
                "identical": bool(torch.equal(out, ref)),
                "store_bytes": store_bytes(store),
                "recording_bytes": recording_bytes(
                    TINY_GRID**2, TINY_TEXT if layer in store.image_to_text else 0, request, TINY_BATCH, heads
                ),
                "text_length": store.text_length,
                "rss_mb": after_build_mb,
                "process_peak_mb": proc_kb("VmHWM") * 1024 / 1e6,
                "plain_peak_mb": plain_peak,
                "recorded_peak_mb": rec_peak,
            }
        )
    )


def tiny_measured(threads: int) -> list[dict[str, Any]]:
    out = []
    for name in TINY:
        cmd = [sys.executable, __file__, "--child-tiny", name, "--threads", str(threads)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return out


# -------------------------------------------------------------------------------------------
# report


def mb(b: float) -> str:
    """Bytes in B, kB, MB or GB (decimal, as issue 24 counts: 4096² x 4 B = 67 MB)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= scale:
            return f"{b / scale:,.{2 if unit == 'GB' else 1}f} {unit}"
    return f"{b:,.0f} B"


def count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3f} {unit}" if unit == "B" else f"{n / scale:.1f} {unit}"
    return str(n)


def sec(t: float) -> str:
    return f"{t:.2f}" if t >= 1 else f"{t:.4f}"


def where(name: str, px: int) -> str:
    return f"{TINY_GRID}x{TINY_GRID} latent" if name in TINY else f"{px} px"


def report(args: argparse.Namespace, sp: dict[str, Any], est: list[dict[str, Any]], tiny: list[dict[str, Any]]) -> str:
    import diffusers

    cmd = "./run python benchmarks/bench_joint_attention.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    fw, ra, al, ad, ir = sp["forward"], sp["ratio"], sp["alone"], sp["added"], sp["isolated_ratio"]
    lines = [
        "# Joint-attention recording: speed and memory (issue 24)",
        "",
        f"Produced by `{cmd.strip()}` on {datetime.date.today().isoformat()}: {cpu}, "
        f"{args.threads} torch threads, torch {torch.__version__}, diffusers {diffusers.__version__}.",
        "Random weights at real shapes (speed does not depend on weight values); see the module doc of "
        "`benchmarks/bench_joint_attention.py` for how each figure is measured. Load average (1, 5, 15 min) "
        f"at the start {', '.join(f'{v:.2f}' for v in args.load_before)}, at the end "
        f"{', '.join(f'{v:.2f}' for v in args.load_after)}, on {os.cpu_count()} cores (other processes "
        "share them, so single rounds vary; compare within a run).",
        "",
        f"## 1. One recorded layer vs a plain forward ({sp['name']}-shaped, {sp['where']}, float32 CPU, batch 1)",
        "",
        f"{count(sp['params'])} parameters; {sp['image_tokens']} image + {sp['text_tokens']} text tokens; "
        f"`record_joint` records `{sp['layer']}` (image→image {sp['i2i_shape']} + image→text {sp['i2t_shape']}). "
        f"Warm-up of each, then {args.repeats} rounds of one plain and one recorded forward, the plain one "
        "first in odd rounds and second in even rounds. Wall time (median, and minimum: the round least "
        "disturbed by other processes) and CPU time of this process (all threads; less sensitive to other "
        "processes than wall time, though waiting threads spin).",
        "",
        "| forward | wall, median s | wall, min s | CPU, median s | wall, each round (s) |",
        "|---|---:|---:|---:|---|",
        f"| plain | {sec(fw['plain']['median'])} | {sec(fw['plain']['min'])} | {sec(fw['plain']['cpu'])} "
        f"| {', '.join(map(sec, sp['plain_all']))} |",
        f"| recording 1 layer | {sec(fw['rec']['median'])} | {sec(fw['rec']['min'])} | {sec(fw['rec']['cpu'])} "
        f"| {', '.join(map(sec, sp['recorded_all']))} |",
        f"| **ratio** (target ≤ 1.3x) | **{ra['median']:.3f}x** | {ra['min']:.3f}x | {ra['cpu']:.3f}x | |",
        "",
        f"The recording's own cost, isolated from the forwards' run-to-run noise: `{sp['layer']}` called alone "
        f"on the inputs it gets in this forward, {sp['layer_calls']} calls with its own processor and "
        f"{sp['layer_calls']} with the recording one (after a warm-up call of each); the difference is what "
        "recording adds to one forward.",
        "",
        f"| `{sp['layer']}` alone | wall, median s | wall, min s | CPU, median s |",
        "|---|---:|---:|---:|",
        f"| own processor | {sec(al['plain']['median'])} | {sec(al['plain']['min'])} | {sec(al['plain']['cpu'])} |",
        f"| recording | {sec(al['rec']['median'])} | {sec(al['rec']['min'])} | {sec(al['rec']['cpu'])} |",
        f"| added per forward | {sec(ad['median'])} | {sec(ad['min'])} | {sec(ad['cpu'])} |",
        f"| (plain forward + added) / plain forward | **{ir['median']:.3f}x** | {ir['min']:.3f}x | {ir['cpu']:.3f}x |",
        "",
        "| memory | value |",
        "|---|---:|",
        f"| store kept (sum of its tensors) | {mb(sp['kept_bytes'])} ({sp['kept_bytes']:,} B) |",
        f"| `recording_bytes(...)` (kept + one score tile) | {mb(sp['predicted_bytes'])} "
        f"({sp['predicted_bytes']:,} B) |",
        f"| resident memory with the weights (RSS) | {sp['weights_rss_mb']:,.0f} MB |",
        f"| peak RSS rise over the RSS before the call, plain forward (max of the rounds) "
        f"| {sp['plain_peak_mb']:,.1f} MB |",
        f"| peak RSS rise over the RSS before the call, recording forward (max of the rounds) "
        f"| {sp['recorded_peak_mb']:,.1f} MB |",
        f"| peak RSS rise, `{sp['layer']}` called alone with its own processor | {sp['layer_plain_peak_mb']:,.1f} MB |",
        f"| peak RSS rise, `{sp['layer']}` called alone, recording (store included) | "
        f"{sp['layer_recorded_peak_mb']:,.1f} MB |",
        "",
        f"Recorded output bit-identical to the plain output: {sp['identical']}; output finite: {sp['finite']}; "
        f"image→image rows sum to 1 within {sp['row_sum_error']:.1e}.",
        "",
        "## 2. Memory from shapes (meta device, no weights materialised) and measured on the tiny test configs",
        "",
        "One recorded layer = the head-averaged image→image (N×N) and image→text (N×T) blocks in float32 "
        "(`kept`), and `recording_bytes` = kept + one score tile (4 x 2²² B ≈ 17 MB at most). Full map = one layer's "
        "joint attention, heads × L² × 4 B, L = N + T (what recording must never materialise).",
        "",
        "| model | size | batch | N | T | attn layers | heads | params | bf16 | fp32 | layer | kept "
        "| `recording_bytes` | full map of one layer |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for e in est:
        lines.append(
            f"| {e['name']} | {where(e['name'], e['px'])} | {e['batch']} | {e['image_tokens']} "
            f"| {e['text_tokens']} | {e['attention_layers']} | {e['heads']} | {count(e['params'])} "
            f"| {mb(e['bf16_bytes'])} | {mb(e['fp32_bytes'])} | `{e['layer']}` | {mb(e['kept_bytes'])} "
            f"| {mb(e['recording_bytes'])} | {mb(e['full_map_bytes'])} |"
        )
    lines += [
        "",
        "Measured on the tiny configs of `tests/test_joint_attention.py` (their inputs, batch 2), each in a fresh "
        "process: one warm-up forward, then the peak resident memory (Linux VmHWM, reset through "
        "`/proc/self/clear_refs` before each forward) over the RSS before it, for a plain forward and for a "
        "forward recording the layer above. Resident memory has page granularity and includes the allocator's "
        "reuse, so rises of a few kB read as 0; the store's bytes are exact.",
        "",
        "| tiny config | output identical | store bytes | `recording_bytes` | text length seen | RSS after build "
        "| process peak | peak rise, plain | peak rise, recording |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in tiny:
        lines.append(
            f"| {t['name']} | {t['identical']} | {t['store_bytes']:,} B | {t['recording_bytes']:,} B "
            f"| {t['text_length']} | {t['rss_mb']:,.0f} MB | {t['process_peak_mb']:,.0f} MB "
            f"| {t['plain_peak_mb']:.2f} MB | {t['recorded_peak_mb']:.2f} MB |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds after the warm-up (default 5)")
    ap.add_argument("--size", type=int, default=512, help="image side in px for the speed run (default 512)")
    ap.add_argument("--estimate-size", type=int, default=1024, help="image side for the estimates (default 1024)")
    ap.add_argument("--out", default=None, help="also write the Markdown report to this file")
    ap.add_argument("--quick", action="store_true", help="tiny shapes only: a smoke run in seconds")
    ap.add_argument("--child-tiny", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child_tiny:
        tiny_child(args.child_tiny)
        return 0
    if args.size % 16:
        ap.error(f"--size must be a multiple of 16 (VAE factor 8 x patch 2), got {args.size}")
    big = ("SD3-medium", "SD3.5-large", "FLUX.1-dev")
    args.load_before = os.getloadavg()
    est = [estimate(name, args.estimate_size) for name in (() if args.quick else big) + TINY]
    sp = speed("tiny SD3" if args.quick else "SD3-medium", args.size, args.repeats)
    tiny = tiny_measured(args.threads)
    args.load_after = os.getloadavg()
    text = report(args, sp, est, tiny)
    print()
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
