"""Durable per-image results: a JSONL file appended and fsynced one image at a time.

Line 1 is a header with the run's fingerprint (dataset, split, method, config, protocol,
model); every further line is one image's record. A run killed at any point loses at most the
image being written: on resume a torn last line is cut off, the fingerprint is checked, and
images already recorded are not computed again.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

__all__ = ["ResultStore", "ResumeMismatchError"]

logger = logging.getLogger(__name__)

_VERSION = 1


class ResumeMismatchError(ValueError):
    """The results file belongs to a different run (dataset, method, config, protocol...)."""


def _canonical(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


class ResultStore:
    """Append-only per-image results of one evaluation run.

    Args:
        path: the ``.jsonl`` file.
        fingerprint: JSON-serialisable description of the run; a resumed file must match it.
        resume: continue an existing file (its records are kept and not recomputed).
        overwrite: start afresh even if the file exists.

    Raises:
        FileExistsError: if the file exists and neither `resume` nor `overwrite` is set.
        ResumeMismatchError: if resuming a file whose header differs from `fingerprint`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fingerprint: dict[str, Any],
        *,
        resume: bool = False,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        self.fingerprint = _canonical(fingerprint)
        self.records: dict[int, dict[str, Any]] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and not overwrite:
            if not resume:
                raise FileExistsError(
                    f"results file {self.path} exists; pass resume=True (CLI: --resume) to "
                    f"continue "
                    f"it or overwrite=True (--overwrite) to start again."
                )
            self._load()
        else:
            if resume and not self.path.exists():
                logger.info("nothing to resume at %s; starting a new run", self.path)
            self._write_header()

    # ------------------------------------------------------------------ reading
    def _load(self) -> None:
        with open(self.path, "rb") as f:
            data = f.read()
        good_end = 0
        header = None
        pos = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            if nl < 0:
                break  # torn last line (killed while writing): cut below
            try:
                obj = json.loads(data[pos:nl])
            except json.JSONDecodeError:
                break
            if header is None:
                header = obj
            elif obj.get("type") == "image":
                self.records[int(obj["index"])] = obj
            good_end = pos = nl + 1
        if header is None or header.get("type") != "header":
            raise ResumeMismatchError(
                f"{self.path} is not a diffuseg results file (no header line)."
            )
        if _canonical(header.get("fingerprint")) != self.fingerprint:
            diff = sorted(
                k
                for k in set(header.get("fingerprint", {})) | set(self.fingerprint)
                if header.get("fingerprint", {}).get(k) != self.fingerprint.get(k)
            )
            raise ResumeMismatchError(
                f"cannot resume {self.path}: it was written by a different run "
                f"(differs in {diff}); "
                f"use another --out or --overwrite."
            )
        if good_end < len(data):
            logger.warning(
                "%s: dropping a torn last line (%d bytes)", self.path, len(data) - good_end
            )
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
                f.flush()
                os.fsync(f.fileno())
        logger.info("resuming %s: %d images already done", self.path, len(self.records))

    # ------------------------------------------------------------------ writing
    def _append(self, obj: dict[str, Any]) -> None:
        line = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
        with open(self.path, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def _write_header(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "wb") as f:
            header = {"type": "header", "version": _VERSION, "fingerprint": self.fingerprint}
            f.write((json.dumps(header) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def add(self, record: dict[str, Any]) -> None:
        """Append one image's record durably (``index`` and ``id`` keys required)."""
        record = {"type": "image", **record}
        self._append(record)
        self.records[int(record["index"])] = record

    def done(self, index: int) -> bool:
        """Whether image `index` already has a record."""
        return index in self.records

    def ordered(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Records in dataset order (only indices < `limit` when given)."""
        return [self.records[i] for i in sorted(self.records) if limit is None or i < limit]
