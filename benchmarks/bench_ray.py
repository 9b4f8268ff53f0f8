"""Ray engine benchmark (issue 15): ``diffuseg batch`` throughput on the toy model over synthetic
scenes, on this machine's CPUs.

Figures, each a ratio against a baseline measured in the same run:

* 2 actors vs 1 actor on Ray (throughput ratio);
* ``--engine ray`` with 1 actor vs ``--engine local``, same torch threads (overhead);
* ``--engine local`` with all cores vs 1 thread (what one process gets from the cores).

Every configuration segments the same images into its own folder; "end to end" is the wall
time of `run_batch` (model loading, Ray Data start-up and actor construction included: the
Ray instance itself is started once, before, and timed apart), "steady" is the throughput
over the second half of the images (start-up, and the backlog of results it causes, excluded). The outputs of every
configuration are checked to be byte-identical to the first one's (same ``--batch-size``).

    PYTHONPATH=/tmp/snap15/src .venv/bin/python benchmarks/bench_ray.py [--num-scenes 200] \\
        [--batch-size 1] [--write docs/ray_benchmark.md]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from diffuseg.engine.inputs import resolve_inputs
from diffuseg.engine.ray_engine import RayOptions
from diffuseg.engine.runner import run_batch
from diffuseg.engine.work import Job


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.name.endswith((".png", ".json")):
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def measure(name: str, items, job: Job, engine: str, options, out_root: Path) -> dict:
    out = out_root / name.replace(" ", "_").replace(",", "")
    job = Job(**{**job.__dict__, "out_dir": str(out)})
    stamps: list[float] = []
    t0 = time.perf_counter()
    summary = run_batch(
        job, items, engine=engine, ray_options=options, on_record=lambda r: stamps.append(time.perf_counter())
    )
    total = time.perf_counter() - t0
    n = summary.segmented
    assert n == len(items) and not summary.failures, (name, n, summary.failures)
    k = len(stamps) // 2  # steady: the second half of the images (start-up and its backlog excluded)
    span = stamps[-1] - stamps[k]
    steady = (len(stamps) - 1 - k) / span if span > 0 else float("nan")
    row = {
        "name": name,
        "seconds": total,
        "end_to_end": n / total,
        "steady": steady,
        "first": stamps[0] - t0,
        "digest": digest(out),
        "load": os.getloadavg()[0],
    }
    print(
        f"{name:34s} {total:7.1f} s  end-to-end {row['end_to_end']:6.2f} img/s  steady {steady:6.2f} img/s  "
        f"first image after {row['first']:5.1f} s  load {row['load']:.1f}",
        flush=True,
    )
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-scenes", type=int, default=200, help="synthetic scenes (default 200)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per model call (default 1)")
    parser.add_argument("--write", default=None, help="write the results as Markdown to this file")
    args = parser.parse_args()
    import ray
    import torch

    cores = os.cpu_count() or 1
    items = resolve_inputs("dataset:synthetic", limit=args.num_scenes)
    base = Job(method="diffseg", out_dir="", model="toy", batch_size=args.batch_size, seed=0)
    load = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run_batch(Job(**{**base.__dict__, "out_dir": str(root / "warm-up")}), items[:2])  # imports, file caches
        many = Job(**{**base.__dict__, "threads": cores})
        rows.append(measure(f"local, {cores} threads", items, many, "local", None, root))
        rows.append(measure("local, 1 thread", items, Job(**{**base.__dict__, "threads": 1}), "local", None, root))
        t0 = time.perf_counter()
        ray.init(num_cpus=cores, include_dashboard=False, logging_level="WARNING")
        ray_start = time.perf_counter() - t0
        print(f"ray.init(num_cpus={cores}): {ray_start:.1f} s", flush=True)
        try:
            one = Job(**{**base.__dict__, "threads": 1})
            rows.append(measure("ray, 1 actor x 1 thread", items, one, "ray", RayOptions(actors=1), root))
            rows.append(measure("ray, 2 actors x 1 thread", items, one, "ray", RayOptions(actors=2), root))
            if cores > 1:
                wide = Job(**{**base.__dict__, "threads": cores})
                rows.append(measure(f"ray, 1 actor x {cores} threads", items, wide, "ray", RayOptions(actors=1), root))
        finally:
            ray.shutdown()
    identical = len({r["digest"] for r in rows}) == 1
    by = {r["name"]: r for r in rows}

    def ratio(a: str, b: str, key: str) -> float:
        return by[a][key] / by[b][key]

    local1, ray1, ray2 = "local, 1 thread", "ray, 1 actor x 1 thread", "ray, 2 actors x 1 thread"
    lines = [
        "# Ray engine benchmark (`benchmarks/bench_ray.py`)",
        "",
        f"`diffuseg batch` of {len(items)} synthetic scenes (128 x 128) with `--model toy --method diffseg` "
        f"(toy preset), `--batch-size {args.batch_size}`, on this machine: {cores} CPU cores "
        f"({platform.processor() or platform.machine()}), torch {torch.__version__}, ray {ray.__version__}, "
        f"Python {platform.python_version()}; load average before the run {load[0]:.2f} "
        "(the machine is shared: figures are indicative).",
        "",
        "| configuration | wall s | end-to-end img/s | steady img/s | first image after s | load avg after |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['name']} | {r['seconds']:.1f} | {r['end_to_end']:.2f} | {r['steady']:.2f} | {r['first']:.1f} "
            f"| {r['load']:.2f} |"
            for r in rows
        ),
        "",
        f"Ray instance start (`ray.init(num_cpus={cores})`, once, not in the rows): {ray_start:.1f} s.",
        "",
        "| ratio | end-to-end | steady |",
        "|---|---|---|",
        f"| 2 actors / 1 actor (ray, 1 thread each) | {ratio(ray2, ray1, 'end_to_end'):.2f} "
        f"| {ratio(ray2, ray1, 'steady'):.2f} |",
        f"| ray 1 actor / local (1 thread each) | {ratio(ray1, local1, 'end_to_end'):.2f} "
        f"| {ratio(ray1, local1, 'steady'):.2f} |",
        f"| local {cores} threads / local 1 thread | {ratio(f'local, {cores} threads', local1, 'end_to_end'):.2f} "
        f"| {ratio(f'local, {cores} threads', local1, 'steady'):.2f} |",
        "",
        f"Outputs byte-identical across all configurations: {'yes' if identical else 'NO'}.",
        "",
        "Threads: each Ray CPU actor runs torch with 1 thread here (`--threads 1`; the default for CPU "
        "actors is the cluster's CPUs divided by `--actors`), so 2 actors on 2 cores use each core once; "
        "the local rows are given 1 thread and all cores to separate the engine's overhead from the "
        "threading gain.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        Path(args.write).write_text(text)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
