"""Throughput (issue 25): images per second per method, end to end, at SD-1.5 shape.

One timed call is `Segmenter.segment_batch` on B images, as the CLI and the eval runner call
it: preprocessing (each random 640 x 640 image resized to the model input), the feature-cache
key (SHA-1 of the pixels), the CLIP text encoder, the VAE encoder, one UNet pass that records
only what the method's `FeatureRequest` names (every other attention layer keeps diffusers'
fused SDPA processor; DiffCut stops after its feature layer), the method's post-processing, and
the labels handed back on the CPU. Components are SD-1.5-shaped with random weights
(`_configs.py`: UNet 860 M parameters, VAE 84 M, CLIP ViT-L/14 text tower 123 M, CLIP's real
BPE tokenizer): speed does not depend on weight values, but post-processing that depends on
the content (how many segments DiffSeg's merge keeps, how deep DiffCut's cut recurses) sees
random-weight features, not a trained model's.

Baselines, measured in the same run at the same batch, dtype and compile setting:
    unet (plain forward)      one UNet call on prepared latents and text embeddings: the ratio
                              column divides every row by it
    pipeline (no recording)   preprocess + text + VAE + that plain UNet call: the end to end of
                              a method that would cost nothing

Peak memory per row: on CUDA `torch.cuda.max_memory_allocated` (reset per row); on CPU the
process's peak resident set, VmHWM, reset per row by writing 5 to /proc/self/clear_refs; it
counts the weights of every component in that row's dtype.

A dtype the device cannot run (e.g. float16 kernels missing on CPU), or whose plain forward takes
longer than --max-call-s, is reported as skipped rows with the reason. --compile runs the UNet
under `torch.compile` (`nn.Module.compile`, in place); the note column counts the graphs
compiled and graph breaks during the row (recording processors are new objects per pass).

CPU (bounded default grid: batch 1, fp32 and bf16, no compile; 22 min on 2 shared cores, where
one SD-1.5 UNet forward at 512 px takes 25 s in fp32; add --batch-sizes 1,4 for batch 4, 4x longer):
    python benchmarks/bench_throughput.py --threads 2 --out docs/throughput.md
GPU (the issue's grid; fills the "cuda" and "cuda-compile-on" sections of the same file):
    python benchmarks/bench_throughput.py --device cuda --dtypes fp32,fp16,bf16 \
        --batch-sizes 1,4,8,16 --repeats 5 --out docs/throughput.md
    python benchmarks/bench_throughput.py --device cuda --dtypes bf16 --batch-sizes 1,4,8,16 \
        --repeats 5 --compile on --out docs/throughput.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from typing import Any


def _threads_from_argv() -> None:
    """Apply --threads to the BLAS/OpenMP pools before torch loads them (see bench_diffcut)."""
    if "--threads" in sys.argv[:-1]:
        n = sys.argv[sys.argv.index("--threads") + 1]
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = n


_threads_from_argv()

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from _configs import SD15_TEXT, SD15_UNET, SD_SCHEDULER, SD_VAE  # noqa: E402
from _throughput_report import (  # noqa: E402
    PIPELINE,
    PLAIN,
    Row,
    markdown_table,
    median_seconds,
    parse_choices,
    parse_sizes,
    write_section,
)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_METHODS = "diffseg,diffcut,diffsegmenter,maskdiffusion-kmeans"
#: Methods whose queries carry class names (one prompt row per name for DiffSegmenter).
OPEN_VOCABULARY = ("diffsegmenter", "maskdiffusion")
TIMESTEP = 300  # the plain forward's timestep (DiffSeg's); the UNet's cost does not depend on it


# ------------------------------------------------------------------------------- the model
def _tiny_configs() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A few-MB UNet/VAE/text tower of the same layout, for a smoke run (`--model tiny`)."""
    unet = {**SD15_UNET, "block_out_channels": (32, 64, 64, 64), "norm_num_groups": 16, "attention_head_dim": 4}
    unet["cross_attention_dim"] = 64
    vae = {**SD_VAE, "block_out_channels": (16, 32, 32, 32), "norm_num_groups": 16}
    text = {**SD15_TEXT, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}
    return unet, vae, text


def build_backbone(model: str, device: str) -> Any:
    """A `DiffusionBackbone` of random SD-1.5-shaped components (``model="sd15"``) or tiny
    ones (``"tiny"``), float32, initialised directly on `device`."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from diffuseg import DiffusionBackbone
    from diffuseg.synthetic.tokenizer import build_clip_tokenizer

    unet_cfg, vae_cfg, text_cfg = (SD15_UNET, SD_VAE, SD15_TEXT) if model == "sd15" else _tiny_configs()
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**unet_cfg)
        vae = AutoencoderKL(**vae_cfg)
        text = CLIPTextModel(CLIPTextConfig(**text_cfg))
    tokenizer = build_clip_tokenizer(text_cfg["max_position_embeddings"])
    scheduler = DDIMScheduler(**SD_SCHEDULER)
    return DiffusionBackbone(unet, vae, text, tokenizer, scheduler, name=f"random {model}", family="sd1")


def random_images(count: int, side: int, seed: int = 0) -> list[np.ndarray]:
    """`count` distinct random (side, side, 3) uint8 images (distinct, so the segmenter's
    feature cache never answers a timed call)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(count)]


def recorded_layers(backbone: Any, request: Any) -> str:
    """The attention layers `request` records on the backbone's UNet, as "recorded/all"."""
    from diffuseg.backbone.recorder import attention_layers

    names = attention_layers(backbone.unet)
    return f"{sum(request.wants_attention(n) for n in names)}/{len(names)}"


# ------------------------------------------------------------------------------- measuring
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_reset(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    elif os.path.exists("/proc/self/clear_refs"):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident set


def _peak_read(device: str) -> int | None:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _compile_counts() -> tuple[int, int]:
    """(graphs compiled, graph breaks) so far, from dynamo's counters (0, 0 if unavailable)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return 0, 0
    return int(counters["stats"]["unique_graphs"]), int(sum(counters["graph_break"].values()))


def measure(row: Row, calls: list, args: argparse.Namespace) -> Row:
    """Fill `row` from `calls` (the first is the warm-up, the rest are timed; each syncs):
    times, peak memory, and with compile the graphs and breaks; a failure skips the row."""
    _peak_reset(args.device)
    graphs, breaks = _compile_counts()
    try:
        t0 = time.perf_counter()
        calls[0]()
        row.first_s = time.perf_counter() - t0
        rest = iter(calls[1:])
        row.seconds = median_seconds(lambda: next(rest)(), len(calls) - 1, time.perf_counter)
    except (RuntimeError, NotImplementedError, ValueError) as e:  # missing kernels, out of memory
        row.seconds, row.note = None, f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    row.peak_bytes = _peak_read(args.device)
    if row.compiled:
        g, b = _compile_counts()
        row.note = (row.note + "; " if row.note else "") + f"{g - graphs} graphs compiled, {b - breaks} graph breaks"
    return row


def plain_calls(backbone: Any, batch: int, args: argparse.Namespace) -> tuple[list, list]:
    """Calls of the two baselines: the plain UNet forward and the pipeline without recording."""
    f = backbone.vae_scale_factor
    side = args.image_size // f
    channels = backbone.unet.config.in_channels
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(batch, channels, side, side, generator=g).to(backbone.device, backbone.dtype)
    prompt = backbone.encode_prompts([""] * batch)
    size = (args.image_size, args.image_size)

    def unet() -> None:
        backbone.unet_forward(latents, TIMESTEP, prompt, size)
        _sync(args.device)

    images = random_images(batch * (args.repeats + 1), args.input_side, seed=batch)

    def pipeline(i: int) -> None:
        pixels, _ = backbone.preprocess(images[i * batch : (i + 1) * batch], args.image_size)
        z = backbone.encode_images(pixels)
        backbone.unet_forward(z, TIMESTEP, backbone.encode_prompts([""] * batch), size)
        _sync(args.device)

    n = args.repeats + 1
    return [unet] * n, [lambda i=i: pipeline(i) for i in range(n)]


def method_row(backbone: Any, method: str, batch: int, row: Row, args: argparse.Namespace) -> Row:
    """Time `Segmenter(backbone, method).segment_batch` on fresh images each call."""
    from diffuseg import Segmenter
    from diffuseg.plan import Query

    try:
        seg = Segmenter(backbone, method, batch_size=batch, image_size=args.image_size)
    except ValueError as e:  # e.g. the memory check refuses the batch
        row.note = f"ValueError: {str(e)[:120]}"
        return row
    classes = args.classes if method in OPEN_VOCABULARY else None
    images = random_images(batch * (args.repeats + 1), args.input_side, seed=1000 + batch)
    queries = [Query(image=im, classes=classes) for im in images]
    request = seg.spec.plan(seg.config, queries[0], backbone, seg.resources).request
    row.recorded = recorded_layers(backbone, request)
    generator = torch.Generator().manual_seed(0)

    def call(i: int) -> None:
        seg.segment_batch(queries[i * batch : (i + 1) * batch], generator=generator)
        _sync(args.device)

    return measure(row, [lambda i=i: call(i) for i in range(args.repeats + 1)], args)


# ------------------------------------------------------------------------------- the grid
def dtype_rows(backbone: Any, dtype: str, compiled: bool, args: argparse.Namespace) -> list[Row]:
    """Every row of one dtype and compile setting: per batch size the two baselines, then the
    methods; a batch whose plain forward fails or exceeds --max-call-s skips its methods."""
    rows = []
    for batch in args.batch_sizes:
        plain = Row(PLAIN, batch, dtype, compiled)
        reason = ""
        try:
            unet_calls, pipeline_calls = plain_calls(backbone, batch, args)
        except (RuntimeError, NotImplementedError) as e:
            reason = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        if not reason:
            measure(plain, unet_calls, args)
            reason = plain.note if plain.seconds is None else ""
        if not reason and plain.first_s > args.max_call_s and not compiled:
            reason = f"plain forward took {plain.first_s:.0f} s > --max-call-s {args.max_call_s:.0f}"
        plain.note = plain.note or reason
        rows.append(plain)
        _report_row(plain)
        for method in (PIPELINE, *args.methods):
            row = Row(method, batch, dtype, compiled, note=reason)
            if not reason:
                if method == PIPELINE:
                    measure(row, pipeline_calls, args)
                else:
                    method_row(backbone, method, batch, row, args)
            rows.append(row)
            _report_row(row)
    return rows


def run_grid(args: argparse.Namespace) -> list[Row]:
    """All rows: uncompiled for every dtype, then (with --compile) compiled for every dtype
    (the UNet is compiled once, in place; a dtype or batch change recompiles)."""
    backbone = build_backbone(args.model, args.device)
    print(f"built {backbone.name} on {args.device}", flush=True)
    rows: list[Row] = []
    for compiled in args.compile_modes:
        if compiled:
            backbone.unet.compile()
        for dtype in args.dtypes:
            backbone.to(args.device, DTYPES[dtype])
            rows += dtype_rows(backbone, dtype, compiled, args)
    return rows


def _report_row(row: Row) -> None:
    ips = f"{row.images_per_s:.3f} img/s" if row.images_per_s else "skipped"
    print(f"  {row.method:24s} b={row.batch:<2d} {row.dtype} compile={row.compiled!s:5s} {ips}  {row.note}", flush=True)


# ------------------------------------------------------------------------------- the report
def machine(device: str) -> str:
    """One line: the device, threads, library versions, load."""
    import diffusers

    if device.startswith("cuda"):
        where = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    else:
        cpu = platform.processor() or platform.machine()
        if os.path.exists("/proc/cpuinfo"):
            names = [ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")]
            cpu = names[0] if names else cpu
        where = f"{cpu}, {os.cpu_count()} CPUs visible, {torch.get_num_threads()} torch threads"
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (
        f"{where}; torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"Python {platform.python_version()}; load average at the end {load}"
    )


def _goal_line(rows: list[Row], image_size: int) -> str:
    best = max((r.images_per_s or 0.0 for r in rows if r.method == "diffseg" and r.dtype == "bf16"), default=0.0)
    return (
        f"DiffSeg at {image_size} px, bf16, best row: {best:.2f} images/s end to end "
        "(issue 25's goal on one H100-class GPU: >= 50)."
    )


def report(rows: list[Row], args: argparse.Namespace, command: str) -> str:
    """The Markdown section for --out: command, machine, table, DiffSeg against the goal."""
    cuda = args.device.startswith("cuda")
    peak = "peak allocated" if cuda else "peak RSS"
    lines = [
        f"### {'GPU' if cuda else 'CPU'}: {args.model} shape, {args.image_size} px, random weights",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine(args.device)}. Median of {args.repeats} timed call(s) after one warm-up call.",
        "",
        markdown_table(rows, peak, absolute=cuda),
        "",
        _goal_line(rows, args.image_size),
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtypes", default=None, help="of fp32,bf16,fp16 (default: fp32,bf16 on CPU, all three on CUDA)")
    p.add_argument("--batch-sizes", default=None, help="images per call (default: 1 on CPU, 1,4,8,16 on CUDA)")
    p.add_argument("--methods", default=DEFAULT_METHODS, help="registry names, comma-separated")
    p.add_argument("--compile", default="off", choices=("off", "on", "both"), help="torch.compile the UNet")
    p.add_argument("--threads", type=int, default=None, help="torch and BLAS threads (default: torch's)")
    p.add_argument("--image-size", type=int, default=512, help="model input side in pixels")
    p.add_argument("--repeats", type=int, default=1, help="timed calls per row, after one warm-up")
    p.add_argument("--max-call-s", type=float, default=300.0, help="skip a batch whose plain forward is slower")
    p.add_argument("--classes", default="cat,sofa,window", help="class names of open-vocabulary queries")
    p.add_argument("--model", default="sd15", choices=("sd15", "tiny"), help="tiny: a smoke run")
    p.add_argument(
        "--out", default=None, help="Markdown file whose section for this device and --compile is (re)written"
    )
    args = p.parse_args(argv)
    from diffuseg.methods import list_methods

    cuda = args.device.startswith("cuda")
    args.dtypes = args.dtypes or ("fp32,fp16,bf16" if cuda else "fp32,bf16")
    args.batch_sizes = args.batch_sizes or ("1,4,8,16" if cuda else "1")
    args.dtypes = parse_choices(args.dtypes, list(DTYPES), "--dtypes")
    args.methods = parse_choices(args.methods, list_methods(), "--methods")
    args.batch_sizes = parse_sizes(args.batch_sizes, "--batch-sizes")
    args.compile_modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    if args.repeats < 1:
        raise ValueError(f"`--repeats` must be >= 1, got {args.repeats}.")
    args.input_side = args.image_size * 5 // 4  # inputs are resized, as real photos are
    return args


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    command = "python benchmarks/bench_throughput.py " + shlex.join(sys.argv[1:])
    rows = run_grid(args)
    text = report(rows, args, command)
    print("\n" + text)
    if args.out:
        key = ("cuda" if args.device.startswith("cuda") else "cpu") + (
            "" if args.compile == "off" else f"-compile-{args.compile}"
        )
        write_section(args.out, key, text)
        print(f"\nwrote the section {key!r} of {args.out}")


if __name__ == "__main__":
    main()
