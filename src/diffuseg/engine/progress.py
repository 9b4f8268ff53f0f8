"""Progress of a run (images/s and ETA on stderr) and its failure log (``failures.jsonl``)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["Progress", "FailureLog", "FAILURES_FILE"]

#: File in the output folder listing this run's failed images, one JSON record per line.
FAILURES_FILE = "failures.jsonl"


class Progress:
    """A tqdm bar on stderr: images done, images/s and the ETA (hidden with ``enabled=False``).

    Args:
        total: images to do in this run.
        done_before: images already done (skipped), shown in the description.
        enabled: show the bar.
        desc: the bar's label.
    """

    def __init__(self, total: int, *, done_before: int = 0, enabled: bool = True, desc: str = "batch") -> None:
        from tqdm.auto import tqdm

        self.start = time.perf_counter()
        self.count = 0
        label = f"{desc} ({done_before} done before)" if done_before else desc
        self.bar = tqdm(total=total, desc=label, unit="img", disable=not enabled, file=sys.stderr, smoothing=0.1)

    def update(self, n: int = 1) -> None:
        self.count += n
        self.bar.update(n)

    @property
    def rate(self) -> float:
        """Images per second so far in this run."""
        elapsed = time.perf_counter() - self.start
        return self.count / elapsed if elapsed > 0 else 0.0

    def close(self) -> None:
        self.bar.close()


class FailureLog:
    """``OUT/failures.jsonl``: one line per failed image of this run (written as it happens, so a
    killed run keeps it). A new run starts it afresh: the images it lists have no outputs and
    are tried again.
    """

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.path = Path(out_dir) / FAILURES_FILE
        self.count = 0
        self._file: Any = None

    def add(self, record: dict[str, Any]) -> None:
        if self._file is None:
            self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 (held for the run)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self.count += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        elif self.path.exists():  # this run had no failure: the last run's list is stale
            self.path.unlink()
