"""Pure helpers of `bench_throughput.py`: flag parsing, rows, ratios and the Markdown report.

No torch import here: the table logic is tested on plain rows (tests/test_bench_throughput.py).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: The baseline row's method name: one plain UNet forward (no recording, fused attention).
PLAIN = "unet (plain forward)"
#: Preprocess + VAE encode + text encode + plain UNet forward: end to end without any method.
PIPELINE = "pipeline (no recording)"


def parse_choices(text: str, allowed: Sequence[str], name: str) -> list[str]:
    """A comma-separated flag value as a list, each item one of `allowed`, order and duplicates
    as given minus repeats.

    Raises:
        ValueError: naming the flag, the bad item and the allowed values.
    """
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"`{name}` must name at least one of {list(allowed)}, got {text!r}.")
    bad = [t for t in items if t not in allowed]
    if bad:
        raise ValueError(f"`{name}` got {bad}; allowed: {list(allowed)}.")
    return list(dict.fromkeys(items))


def parse_sizes(text: str, name: str) -> list[int]:
    """A comma-separated list of positive ints (e.g. batch sizes ``1,4,8,16``).

    Raises:
        ValueError: naming the flag and the bad item.
    """
    out = []
    for t in (t.strip() for t in text.split(",")):
        if not t.isdigit() or int(t) < 1:
            raise ValueError(f"`{name}` must be positive integers separated by commas, got {t!r} in {text!r}.")
        out.append(int(t))
    return list(dict.fromkeys(out))


@dataclass
class Row:
    """One measured configuration.

    Attributes:
        method: a registry name, `PLAIN` or `PIPELINE`.
        batch: images per call.
        dtype: "fp32", "bf16" or "fp16".
        compiled: the UNet ran under `torch.compile`.
        seconds: median wall time of one call (one batch), or None when skipped.
        first_s: the first call (warm-up; with `compiled`, the compilation too).
        peak_bytes: peak memory during the row (see `peak_label`), or None.
        recorded: attention layers recorded / all attention layers ("16/32"), "" if not a method.
        note: why the row was skipped, or what the compiler did.
    """

    method: str
    batch: int
    dtype: str
    compiled: bool
    seconds: float | None = None
    first_s: float | None = None
    peak_bytes: int | None = None
    recorded: str = ""
    note: str = ""

    @property
    def images_per_s(self) -> float | None:
        return None if not self.seconds else self.batch / self.seconds

    @property
    def key(self) -> tuple[int, str, bool]:
        return self.batch, self.dtype, self.compiled


def median_seconds(fn: Callable[[], object], repeats: int, clock: Callable[[], float]) -> float:
    """Median wall time of `repeats` calls of `fn` (the caller syncs inside `fn`)."""
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times)


def ratio_to_plain(rows: Iterable[Row]) -> dict[int, float | None]:
    """Per row (by `id`): its time per batch over the plain UNet forward's at the same batch,
    dtype and compile setting; None where either was skipped."""
    rows = list(rows)
    plain = {r.key: r.seconds for r in rows if r.method == PLAIN}
    out: dict[int, float | None] = {}
    for r in rows:
        base = plain.get(r.key)
        out[id(r)] = r.seconds / base if r.seconds and base else None
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "skipped" if value is None else format(value, spec)


def markdown_table(rows: Sequence[Row], peak_label: str, absolute: bool) -> str:
    """The rows as a Markdown table: method, batch, dtype, compile, images/s (or, when not
    `absolute`, only the ratio is the figure to compare across machines), ratio to the plain
    forward, peak memory (GiB, `peak_label` says what it counts), recorded layers, note."""
    ratios = ratio_to_plain(rows)
    head = (
        f"| method | batch | dtype | compile | images/s | ratio to plain forward | first call s | "
        f"{peak_label} GiB | attn layers recorded | note |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ips = _fmt(r.images_per_s, ".2f" if absolute else ".3f")
        peak = "" if r.peak_bytes is None else f"{r.peak_bytes / 2**30:.2f}"
        first = "" if r.first_s is None else f"{r.first_s:.1f}"
        ratio = _fmt(ratios[id(r)], ".2f")
        compiled = "yes" if r.compiled else "no"
        lines.append(
            f"| {r.method} | {r.batch} | {r.dtype} | {compiled} | {ips} | {ratio} | {first} | {peak} | "
            f"{r.recorded} | {r.note} |"
        )
    return "\n".join(lines)


def write_section(path: str | Path, key: str, text: str) -> None:
    """Put `text` between ``<!-- throughput:KEY:begin -->`` and ``...:end -->`` in `path`,
    keeping the rest of the file (prose, other devices' sections); appended if absent, the
    file created if missing."""
    begin, end = f"<!-- throughput:{key}:begin -->", f"<!-- throughput:{key}:end -->"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    path = Path(path)
    old = path.read_text() if path.is_file() else ""
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(old):
        new = pattern.sub(lambda _m: block, old, count=1)
    else:
        new = (old.rstrip() + "\n\n" if old.strip() else "") + block + "\n"
    path.write_text(new)
