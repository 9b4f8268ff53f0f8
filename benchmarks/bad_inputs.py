"""Replay the bad-input cases of issue 23 as a new user would, and tabulate what happens.

Each case runs ``python -m diffuseg ...`` as a subprocess in a fresh temporary folder that holds a
copy of ``examples/scene.png`` and ``examples/chelsea.jpg`` (under ``examples/``), against the
source tree ``--src`` (put first on PYTHONPATH; default this checkout's ``src``). The Markdown table
lists per case the command, its exit code, whether stderr holds a traceback, the last non-empty
stderr line and a check of the case's expectation ('ok' or what is wrong; '-' where none is set).

    python benchmarks/bad_inputs.py
    python benchmarks/bad_inputs.py --only x1-segment,m-maxpix --timeout 60
    git worktree add -f /tmp/w/base bcb2536
    python benchmarks/bad_inputs.py --src /tmp/w/base/src --out benchmarks/data/bad_inputs_before.md

Demo cases stop at the first 'Running on' line or after a short timeout ('still serving after N
s'; the process group is killed). The full-disk and read-only cases mount a small tmpfs when run
as root (and unmount it afterwards); otherwise the full-disk case is skipped and the read-only one
uses chmod.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = ("scene.png", "chelsea.jpg")
SERVE_TIMEOUT = 90.0  # seconds a demo may take to start up and exit
TMPFS_SIZE = "100k"  # holds scene's three outputs and chelsea's label PNG, not its overlay
TRACEBACK = "Traceback (most recent call last)"
LONG_STEM = "l" * 250  # LONG_STEM.png fits the 255-byte name limit, LONG_STEM.labels.png does not
TRAIN = "train segdiffusion --base toy --dataset synthetic --num-scenes 4 --val-scenes 0"
EVAL = "eval --dataset synthetic --model toy --limit 2"


class Skip(Exception):
    """A case that cannot run here (the message goes into the table)."""


@dataclass
class Result:
    rc: int | None
    stdout: str
    stderr: str
    peak_mb: float
    outcome: str | None = None  # 'timed out after N s' / 'still serving after N s'

    @property
    def text(self) -> str:
        return self.stdout + self.stderr


Check = Callable[[Path, Result], "str | None"]


@dataclass(frozen=True)
class Expect:
    rc: int | tuple[int, ...] | None = None
    exists: tuple[str, ...] = ()  # globs under the case folder that must match
    absent: tuple[str, ...] = ()  # globs that must not match
    says: str | None = None  # regex the output (stdout + stderr) must match
    never_says: str | None = None  # regex it must not match
    checks: tuple[Check, ...] = ()


@dataclass(frozen=True)
class Case:
    id: str
    title: str
    argv: str  # diffuseg's arguments, shlex-split after filling {PLACEHOLDERS} from the setup
    expect: Expect | None = None
    setup: tuple[Callable[[Ctx], None], ...] = ()
    before: tuple[str, ...] = ()  # diffuseg commands run first, in the same folder
    serve: bool = False  # a demo: a start-up that does not exit is its own outcome


@dataclass
class Ctx:
    folder: Path
    subs: dict[str, str] = field(default_factory=dict)
    cleanups: list[Callable[[], object]] = field(default_factory=list)


# --- set-ups ------------------------------------------------------------------------------------


def long_name(ctx: Ctx) -> None:
    shutil.copy(ctx.folder / "examples/scene.png", ctx.folder / f"{LONG_STEM}.png")
    ctx.subs["LONG"] = f"{LONG_STEM}.png"


def _mount_tmpfs(ctx: Ctx, name: str, options: str) -> None:
    path = ctx.folder / name
    path.mkdir()
    if os.geteuid() != 0:
        raise Skip("skipped (needs root for tmpfs)")
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if mount.returncode:
        raise Skip("skipped (needs root for tmpfs)")
    ctx.cleanups.append(lambda: subprocess.run(["umount", "-l", str(path)], capture_output=True))
    ctx.subs[name.upper()] = name


def full_disk(ctx: Ctx) -> None:
    _mount_tmpfs(ctx, "tmpfs", f"size={TMPFS_SIZE}")


def read_only_dir(ctx: Ctx) -> None:
    if os.geteuid() == 0:  # root writes through chmod 555
        _mount_tmpfs(ctx, "ro", "ro,size=64k")
        return
    (ctx.folder / "ro").mkdir()
    (ctx.folder / "ro").chmod(0o555)
    ctx.cleanups.append(lambda: (ctx.folder / "ro").chmod(0o755))
    ctx.subs["RO"] = "ro"


def busy_port(ctx: Ctx) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    ctx.cleanups.append(sock.close)
    ctx.subs["PORT"] = str(sock.getsockname()[1])


def a_file(ctx: Ctx) -> None:
    (ctx.folder / "FILE").write_text("not a folder\n")


def a_dir(ctx: Ctx) -> None:
    (ctx.folder / "somedir").mkdir()


def a_fifo(ctx: Ctx) -> None:
    os.mkfifo(ctx.folder / "pipe.png")


def huge_png(ctx: Ctx, side: int = 20000) -> None:
    """A black 1-bit side x side PNG (about 50 KB on disk, 1.2 GB as RGB)."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    (ctx.folder / "huge.png").write_bytes(png)


# --- checks -------------------------------------------------------------------------------------


def png_bit_depth(path: Path) -> int:
    return path.read_bytes()[24]  # IHDR: 8 signature + 8 chunk head + 4 width + 4 height


def wide_labels(folder: str) -> Check:
    """Label PNGs of images with more than 255 segments must be 16-bit."""

    def check(root: Path, res: Result) -> str | None:
        for meta in sorted((root / folder).glob("*.json")):
            labels = meta.with_name(meta.name[: -len(".json")] + ".labels.png")
            n = json.loads(meta.read_text()).get("num_segments", 0)
            if n > 255 and labels.exists() and png_bit_depth(labels) != 16:
                return f"{labels.name}: {n} segments in a {png_bit_depth(labels)}-bit PNG"
        return None

    return check


def no_orphans(folder: str) -> Check:
    def check(root: Path, res: Result) -> str | None:
        orphans = [p.name for p in (root / folder).glob("*.labels.png") if not _json_of(p).exists()]
        return f"orphan {', '.join(orphans)}" if orphans else None

    return check


def _json_of(labels: Path) -> Path:
    return labels.with_name(labels.name[: -len(".labels.png")] + ".json")


def json_method(pattern: str, method: str) -> Check:
    def check(root: Path, res: Result) -> str | None:
        found = {json.loads(p.read_text()).get("method") for p in root.glob(pattern)}
        return None if found == {method} else f"JSON methods now {sorted(map(str, found))}"

    return check


def not_silently_skipped(root: Path, res: Result) -> str | None:
    if res.rc == 0 and "already done" in res.text:
        return "skipped: outputs of other settings kept as 'already done'"
    return None


def distinct_headings(root: Path, res: Result) -> str | None:
    lines = res.stdout.splitlines()
    for head, rule in zip(lines, lines[1:], strict=False):
        cells = [c.strip() for c in head.strip("| ").split("|")][1:]
        if rule.startswith("|---") and len(set(cells)) < len(cells):
            return f"duplicate headings: {' | '.join(cells)}"
    return None


def peak_below(mb: float) -> Check:
    def check(root: Path, res: Result) -> str | None:
        return None if res.peak_mb < mb else f"peak RSS {res.peak_mb:.0f} MB"

    return check


# --- the cases ----------------------------------------------------------------------------------

SEG = "segment examples/scene.png --model toy"
X1 = "examples/chelsea.jpg --model toy"
WIDE = Expect(rc=0, exists=("out/x1/chelsea.labels.png", "out/x1/chelsea.json"), checks=(wide_labels("out/x1"),))
REFUSED = Expect(rc=2)
X2_SKIP = Expect(checks=(not_silently_skipped,))
SAVED = Expect(rc=0, exists=("out/s/scene.labels.png",))

CASES = (
    Case(
        "x1-segment",
        ">255 segments (slic)",
        "segment examples/chelsea.jpg examples/scene.png --model toy --method slic --n-segments 1000 --out out/x1",
        Expect(
            rc=0,
            exists=("out/x1/chelsea.labels.png", "out/x1/chelsea.json", "out/x1/scene.json"),
            checks=(wide_labels("out/x1"),),
        ),
    ),
    Case(
        "x1-batch",
        ">255 segments, batch",
        "batch examples/ --model toy --method slic --n-segments 1000 --out out/x1",
        WIDE,
    ),
    Case(
        "x1-kmeans",
        ">255 segments (kmeans-color)",
        f"segment {X1} --method kmeans-color --num-clusters 1000 --out out/x1",
        WIDE,
    ),
    Case(
        "x1-mdk",
        "maskdiffusion-kmeans --k 1000 (the toy model has 640 feature pixels)",
        f"segment {X1} --method maskdiffusion-kmeans --k 1000 --out out/x1",
        Expect(rc=(0, 1), never_says="8-bit palette"),
    ),
    Case(
        "x1-mdk300",
        ">255 segments (maskdiffusion-kmeans)",
        f"segment {X1} --method maskdiffusion-kmeans --k 300 --out out/x1",
        WIDE,
    ),
    Case(
        "x2-method",
        "batch rerun with another method",
        "batch examples/ --model toy --method diffcut --out out/x2",
        Expect(rc=2, says="--overwrite", checks=(json_method("out/x2/*.json", "diffseg"),)),
        before=("batch examples/ --model toy --out out/x2",),
    ),
    *(
        Case(
            f"x2-skip-{name}",
            f"segment --skip-existing with another {name}",
            f"{SEG} {extra} --skip-existing --out out/x2",
            X2_SKIP,
            before=(f"{SEG} --out out/x2",),
        )
        for name, extra in (
            ("method", "--method diffcut"),
            ("seed", "--seed 7"),
            ("setting", "--kl-thresholds 0.5,0.5,0.5"),
        )
    ),
    Case(
        "x3-missing",
        "--classes: a file that does not exist",
        f"{SEG} --method diffsegmenter --classes myclasses.txt",
        REFUSED,
    ),
    Case(
        "x3-dir", "--classes: a directory", f"{SEG} --method diffsegmenter --classes somedir/", REFUSED, setup=(a_dir,)
    ),
    Case(
        "x4-long",
        "an output name over the 255-byte limit (LONG = 250 l's)",
        "segment {LONG} examples/scene.png --model toy --out out/x4",
        Expect(rc=1, exists=("out/x4/scene.labels.png", "out/x4/scene.json"), says="fail.*lllll"),
        setup=(long_name,),
    ),
    Case(
        "x5-full",
        f"full disk (a {TMPFS_SIZE} tmpfs as --out)",
        "segment examples/scene.png examples/chelsea.jpg --model toy --out {TMPFS}",
        Expect(rc=1, checks=(no_orphans("tmpfs"),)),
        setup=(full_disk,),
    ),
    Case("x6-under-file", "eval --out under a file", f"{EVAL} --out FILE/sub", REFUSED, setup=(a_file,)),
    Case("x6-read-only", "eval --out a read-only folder", EVAL + " --out {RO}", REFUSED, setup=(read_only_dir,)),
    Case("x7-port", "demo on a port in use", "demo --model toy --port {PORT}", REFUSED, setup=(busy_port,), serve=True),
    Case("x7-host", "demo on a bad host", "demo --model toy --host 999.1.1.1", REFUSED, serve=True),
    Case("x7-nan", "demo --max-upload-mb nan", "demo --model toy --max-upload-mb nan", REFUSED, serve=True),
    Case("x7-inf", "demo --max-upload-mb inf", "demo --model toy --max-upload-mb inf", REFUSED, serve=True),
    Case(
        "x8-validate",
        "train: --validate-every with no validation scenes",
        f"{TRAIN} --validate-every 1 --steps 2 --out out/t8",
        Expect(rc=(0, 2)),
    ),
    Case(
        "x8-resume",
        "train --resume --steps 1 after training to step 2",
        f"{TRAIN} --resume --steps 1 --out out/t8",
        Expect(says=r"(?i)\bpast\b|already", never_says="step -"),
        before=(f"{TRAIN} --steps 2 --out out/t8",),
    ),
    Case("x9-seed-big", "--seed 2**64", f"{SEG} --seed 18446744073709551616", REFUSED),
    Case("x9-seed-neg", "--seed -1", f"{SEG} --seed -1", REFUSED),
    Case("m-folder", "segment a folder", "segment examples/ --model toy", Expect(rc=2, says="diffuseg batch")),
    Case(
        "m-fifo",
        "segment a FIFO",
        "segment pipe.png --model toy",
        Expect(rc=(1, 2), never_says="not found"),
        setup=(a_fifo,),
    ),
    Case("m-out-empty", "--out ''", f"{SEG} --out ''", REFUSED),
    Case(
        "m-save-pred",
        "eval --save-predictions an existing file",
        f"{EVAL} --save-predictions FILE",
        REFUSED,
        setup=(a_file,),
    ),
    Case("m-train-out", "train --out an existing file", f"{TRAIN} --steps 1 --out FILE", REFUSED, setup=(a_file,)),
    Case(
        "m-point", "inspect --point -1,5", "inspect examples/scene.png --model toy --point -1,5 --out view.png", REFUSED
    ),
    Case(
        "m-point-eq",
        "inspect --point=-1,5",
        "inspect examples/scene.png --model toy --point=-1,5 --out view.png",
        REFUSED,
    ),
    Case(
        "m-maxpix",
        "segment a 20000 x 20000 PNG with --max-pixels",
        "segment huge.png --model toy --max-pixels 1000000",
        Expect(rc=(1, 2), says="--max-pixels", checks=(peak_below(1000),)),
        setup=(huge_png,),
    ),
    Case(
        "m-compare",
        "eval --compare of two runs of one method",
        "eval --compare results/a.json results/b.json",
        Expect(rc=0, checks=(distinct_headings,)),
        before=(f"{EVAL} --name a", f"{EVAL} --name b"),
    ),
    Case("m-save-npy", "segment --save npy", f"{SEG} --save npy --out out/s", Expect(rc=0, exists=("out/s/**/*.npy",))),
    Case(
        "m-save-masks",
        "segment --save masks",
        f"{SEG} --save masks --out out/s",
        Expect(rc=0, exists=("out/s/**/*mask*",)),
    ),
    Case(
        "m-no-overlay",
        "segment --no-overlay",
        f"{SEG} --no-overlay --out out/s",
        Expect(rc=0, exists=SAVED.exists, absent=("out/s/scene.overlay.png",)),
    ),
    Case("m-save-unknown", "segment --save tiff", f"{SEG} --save tiff --out out/s", Expect(rc=2, says="--save")),
    Case(
        "m-classes-slash",
        "--classes tv/monitor (a path-looking class)",
        f"{SEG} --method diffsegmenter --classes tv/monitor",
        Expect(rc=2, says="--classes"),
    ),
    Case(
        "m-caption-empty",
        "--caption ''",
        f"{SEG} --method diffsegmenter --classes cat,dog --caption ''",
        Expect(rc=2, says="--caption"),
    ),
    Case(
        "m-point-out",
        "inspect --point 500,5 (off the image)",
        "inspect examples/scene.png --model toy --point 500,5 --out view.png",
        Expect(rc=2, says="outside"),
    ),
    Case("m-eval-seed", "eval --seed 2**64", f"{EVAL} --seed 18446744073709551616", Expect(rc=2, says="--seed")),
    Case("m-eval-name", "eval --name ../y", f"{EVAL} --name ../y", Expect(rc=2, says="--name", absent=("y.*",))),
    Case("m-eval-root", "eval --dataset synthetic --root /tmp", f"{EVAL} --root /tmp", Expect(rc=2, says="--root")),
    Case("m-eval-both", "eval --resume --overwrite", f"{EVAL} --resume --overwrite", Expect(rc=2, says="--resume")),
    Case(
        "m-train-again",
        "train segdiffusion into an existing run without --resume",
        f"{TRAIN} --steps 1 --out out/t9",
        Expect(rc=2, says="--resume", never_says="resume=True"),
        before=(f"{TRAIN} --steps 1 --out out/t9",),
    ),
)


# --- running ------------------------------------------------------------------------------------


def _read(handle) -> str:
    return os.pread(handle.fileno(), 1 << 24, 0).decode(errors="replace")


def _kill(pid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        time.sleep(2)


def run_cli(argv: list[str], cwd: Path, env: dict[str, str], python: str, timeout: float, serve: bool) -> Result:
    """Run ``python -m diffuseg ARGV``; a run past `timeout` (or a demo that serves) is killed."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        cmd = [python, "-m", "diffuseg", *argv]
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
        )
        start, outcome = time.monotonic(), None
        while not (done := os.wait4(proc.pid, os.WNOHANG))[0]:
            elapsed = time.monotonic() - start
            serving = serve and "Running on" in _read(out) + _read(err)
            if serving or elapsed > timeout:
                outcome = f"{'still serving' if serve else 'timed out'} after {elapsed:.0f} s"
                _kill(proc.pid)
                done = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
        _kill(proc.pid)  # leftovers of its process group
        proc.returncode = os.waitstatus_to_exitcode(done[1])
        rc = None if outcome else proc.returncode
        return Result(rc, _read(out), _read(err), done[2].ru_maxrss / 1024, outcome)


def judge(expect: Expect | None, root: Path, res: Result) -> str:
    if expect is None:
        return "-"
    problems = []
    wanted = expect.rc if isinstance(expect.rc, tuple) else (expect.rc,)
    if res.outcome:
        problems.append(res.outcome)
    elif expect.rc is not None and res.rc not in wanted:
        problems.append(f"exit {res.rc}, expected {' or '.join(map(str, wanted))}")
    if TRACEBACK in res.stderr:
        problems.append("traceback")
    if "unrecognized arguments" in res.stderr:
        problems.append("unknown flag")
    problems += [f"missing {p}" for p in expect.exists if not glob.glob(str(root / p), recursive=True)]
    problems += [f"made {p}" for p in expect.absent if glob.glob(str(root / p), recursive=True)]
    if expect.says and not re.search(expect.says, res.text):
        problems.append(f"no message matching /{expect.says}/")
    if expect.never_says and re.search(expect.never_says, res.text):
        problems.append(f"says /{expect.never_says}/")
    problems += [p for check in expect.checks if (p := check(root, res))]
    return "; ".join(problems) or "ok"


def last_line(text: str, width: int = 120) -> str:
    lines = [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= width else line[: width - 3] + "..."


def run_case(case: Case, args: argparse.Namespace, env: dict[str, str]) -> list[str]:
    """One table row: id, command, exit, traceback, last stderr line, check."""
    shown = f"`{case.argv.replace('{', '').replace('}', '')}`"
    with tempfile.TemporaryDirectory(prefix=f"bad_{case.id}_") as tmp:
        ctx = Ctx(Path(tmp))
        (ctx.folder / "examples").mkdir()
        for name in EXAMPLES:
            shutil.copy(REPO / "examples" / name, ctx.folder / "examples" / name)
        try:
            for step in case.setup:
                step(ctx)
            timeout = min(args.timeout, SERVE_TIMEOUT) if case.serve else args.timeout
            first = [run_cli(shlex.split(b), ctx.folder, env, args.python, args.timeout, False) for b in case.before]
            res = run_cli(shlex.split(case.argv.format(**ctx.subs)), ctx.folder, env, args.python, timeout, case.serve)
            check = judge(case.expect, ctx.folder, res)
            failed = [f"setup step exit {r.rc}" for r in first if r.rc != 0]
            check = "; ".join([*failed, check]) if failed else check
        except Skip as skip:
            return [case.id, shown, str(skip), "-", "", str(skip)]
        finally:
            for cleanup in reversed(ctx.cleanups):
                cleanup()
    exit_code = res.outcome or str(res.rc)
    trace = "yes" if TRACEBACK in res.stderr else "no"
    return [case.id, shown, exit_code, trace, last_line(res.stderr), check]


def md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def describe(src: str, python: str) -> str:
    rev = subprocess.run(["git", "-C", src, "log", "-1", "--format=%h"], capture_output=True, text=True)
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return f"Source: `{src}` (commit {rev.stdout.strip() or 'unknown'}); Python `{python}`; {when}."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", default=str(REPO / "src"), help="source tree put on PYTHONPATH")
    parser.add_argument("--only", help="comma-separated case ids")
    parser.add_argument("--out", help="also write the table to this Markdown file")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs diffuseg")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per command (default 120)")
    args = parser.parse_args(argv)
    wanted = set(args.only.split(",")) if args.only else None
    cases = [c for c in CASES if wanted is None or c.id in wanted]
    if wanted and (unknown := wanted - {c.id for c in cases}):
        parser.error(f"unknown case ids: {', '.join(sorted(unknown))}")
    env = {**os.environ, "PYTHONPATH": str(Path(args.src).resolve())}
    lines = ["# Bad inputs of issue 23", "", describe(args.src, args.python), ""]
    lines += [md_row(["case", "command", "exit", "traceback", "last stderr line", "check"]), "|---" * 6 + "|"]
    print("\n".join(lines), flush=True)
    for case in cases:
        lines.append(md_row(run_case(case, args, env)))
        print(lines[-1], flush=True)
    legend = [""] + [
        f"- **{c.id}**: {c.title}" + (f" (after `{'`, `'.join(c.before)}`)" if c.before else "") for c in cases
    ]
    print("\n".join(legend))
    if args.out:
        Path(args.out).write_text("\n".join(lines + legend) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
