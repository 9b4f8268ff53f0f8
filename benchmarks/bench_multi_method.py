"""Several methods from one command against one command per method: wall time and bytes.

Writes --num-images synthetic test scenes as PNG files, then runs (fresh interpreters, as a
user would, on the shipped toy model):

* one command per method: ``diffuseg segment IMAGES --method M --out sep/M ...``;
* one command for all: ``diffuseg segment IMAGES --method A,B,C --out one ...`` (outputs in
  ``one/A``, ``one/B``, ``one/C``; the passes are shared where they agree).

It prints both wall times, their ratio (target <= 0.5) and whether every output file is
byte-identical. The settings make the three passes agree (timestep 300 without noise, as
DiffSeg's paper); with each method's own defaults the passes differ and the log says why.

``--command eval`` times ``diffuseg eval --dataset synthetic --split test --limit N --seed 0``
the same way (one results file and report per method either way) and compares each method's
records (every image's counts; the per-image seconds aside) and metrics.

Run:  python benchmarks/bench_multi_method.py [--num-images 20] [--methods diffseg,diffcut,maskdiffusion-kmeans]
      python benchmarks/bench_multi_method.py --command eval
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Flags that make the passes agree, and the methods (of the default three) each applies to.
COMMON = {"--timestep": ("300", None), "--no-add-noise": (None, ("diffcut", "diffseg"))}


def write_scenes(folder: Path, count: int) -> list[str]:
    """`count` scenes of the synthetic test split as PNG files; their paths."""
    from diffuseg.synthetic.dataset import SyntheticScenes

    data = SyntheticScenes("test", num_scenes=count)
    paths = []
    for i in range(count):
        path = folder / f"scene{i:03d}.png"
        data[i].image.save(path)
        paths.append(str(path))
    return paths


def flags_for(methods: list[str]) -> list[str]:
    """The agreeing flags for a command of `methods` (a flag only where one of them has it)."""
    out = []
    for flag, (value, owners) in COMMON.items():
        if owners is None or any(m in owners for m in methods):
            out += [flag] + ([value] if value is not None else [])
    return out


def timed_run(args: list[str]) -> float:
    """Wall seconds of ``python -m diffuseg ARGS`` (raises if it fails)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "diffuseg", *args], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"diffuseg {' '.join(args)} failed:\n{done.stderr}")
    return time.perf_counter() - start


def same_bytes(a: Path, b: Path) -> tuple[int, list[str]]:
    """(files compared, names that differ or exist on one side only), recursively."""
    cmp = filecmp.dircmp(a, b)
    files, bad = 0, [*cmp.left_only, *cmp.right_only]
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    files += len(cmp.common_files)
    bad += mismatch + errors
    for sub in cmp.common_dirs:
        n, more = same_bytes(a / sub, b / sub)
        files, bad = files + n, bad + more
    return files, bad


def same_records(a: Path, b: Path) -> tuple[int, list[str]]:
    """(records compared, results files whose records or metrics differ) of two eval folders."""
    count, bad = 0, []
    for path in sorted(a.glob("*.jsonl")):
        rows = [[_untimed(json.loads(line)) for line in p.read_text().splitlines()[1:]] for p in (path, b / path.name)]
        metrics = [json.loads(p.with_suffix(".json").read_text())["metrics"] for p in (path, b / path.name)]
        count += len(rows[0])
        if rows[0] != rows[1] or metrics[0] != metrics[1]:
            bad.append(path.name)
    return count, bad


def _untimed(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "seconds"}


def _command(kind: str, methods: list[str], out: Path, images: list[str], num: int, base: list[str]) -> list[str]:
    if kind == "segment":
        return ["segment", *images, "--method", ",".join(methods), "--out", str(out), *base, *flags_for(methods)]
    data = ["--dataset", "synthetic", "--split", "test", "--limit", str(num), "--seed", "0"]
    return ["eval", *data, "--method", ",".join(methods), "--out", str(out), *base, *flags_for(methods)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-images", type=int, default=20)
    parser.add_argument("--methods", default="diffseg,diffcut,maskdiffusion-kmeans")
    parser.add_argument("--model", default="toy")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per command (--threads)")
    parser.add_argument("--command", choices=("segment", "eval"), default="segment")
    args = parser.parse_args()
    methods = args.methods.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        images = write_scenes(root / "images", args.num_images)
        base = ["--model", args.model, "--no-progress"] + (["--threads", str(args.threads)] if args.threads else [])
        separate = 0.0
        for m in methods:  # eval: every method's results into one folder, as the shared run writes them
            out = root / "sep" / (m if args.command == "segment" else "")
            separate += timed_run(_command(args.command, [m], out, images, args.num_images, base))
        shared = timed_run(_command(args.command, methods, root / "one", images, args.num_images, base))
        if args.command == "segment":
            files, bad = same_bytes(root / "sep", root / "one")
            what = "files compared", "all byte-identical"
        else:
            files, bad = same_records(root / "sep", root / "one")
            what = "image records compared", "all equal (counts and metrics)"
    print(f"diffuseg {args.command}: {len(methods)} methods ({', '.join(methods)}), {args.num_images} images, "
          f"model {args.model}, {os.cpu_count()} CPU(s)")  # fmt: skip
    print(f"separate commands: {separate:7.1f} s")
    print(f"one command:       {shared:7.1f} s   ratio {shared / separate:.2f}x (target <= 0.5x)")
    print(f"outputs: {files} {what[0]}, {what[1] if not bad else f'{len(bad)} differ: {bad[:5]}'}")


if __name__ == "__main__":
    main()
