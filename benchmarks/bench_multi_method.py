"""Several methods from one command against one command per method: wall time and bytes.

Writes --num-images synthetic test scenes as PNG files, then runs (fresh interpreters, as a
user would, on the shipped toy model):

* one command per method: ``diffuseg segment IMAGES --method M --out sep/M ...``;
* one command for all: ``diffuseg segment IMAGES --method A,B,C --out one ...`` (outputs in
  ``one/A``, ``one/B``, ``one/C``; the passes are shared where they agree).

It prints both wall times, their ratio (target <= 0.5) and whether every output file is
byte-identical. The settings make the three passes agree (timestep 300 without noise, as
DiffSeg's paper); with each method's own defaults the passes differ and the log says why.

Run:  python benchmarks/bench_multi_method.py [--num-images 20] [--methods diffseg,diffcut,maskdiffusion-kmeans]
"""

from __future__ import annotations

import argparse
import filecmp
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-images", type=int, default=20)
    parser.add_argument("--methods", default="diffseg,diffcut,maskdiffusion-kmeans")
    parser.add_argument("--model", default="toy")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per command (--threads)")
    args = parser.parse_args()
    methods = args.methods.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        images = write_scenes(root / "images", args.num_images)
        base = ["--model", args.model, "--no-progress"] + (["--threads", str(args.threads)] if args.threads else [])
        separate = 0.0
        for m in methods:
            separate += timed_run(
                ["segment", *images, "--method", m, "--out", str(root / "sep" / m), *base, *flags_for([m])]
            )
        shared = timed_run(
            ["segment", *images, "--method", ",".join(methods), "--out", str(root / "one"), *base, *flags_for(methods)]
        )
        files, bad = same_bytes(root / "sep", root / "one")
    print(f"{len(methods)} methods ({', '.join(methods)}), {args.num_images} images, model {args.model}, "
          f"{os.cpu_count()} CPU(s)")  # fmt: skip
    print(f"separate commands: {separate:7.1f} s")
    print(f"one command:       {shared:7.1f} s   ratio {shared / separate:.2f}x (target <= 0.5x)")
    print(f"outputs: {files} files compared, {'all byte-identical' if not bad else f'{len(bad)} differ: {bad[:5]}'}")


if __name__ == "__main__":
    main()
