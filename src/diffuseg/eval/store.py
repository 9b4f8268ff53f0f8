"""Durable per-image results: a JSONL file appended and fsynced one image at a time.

Line 1 is a header with the run's fingerprint (dataset, split, method, config, protocol,
model); every further line is one image's record. A run killed at any point loses at most the
image being written: on resume a torn last line is cut off, the fingerprint is checked, and
images already recorded are not computed again. Any other damage (a bad line before the last,
bytes that are not UTF-8) is an error naming the file and line, and the file is left as it is:
valid records are never deleted.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
from pathlib import Path
from typing import Any

__all__ = ["CorruptResultsError", "ResultStore", "ResumeMismatchError", "check_results_file"]

logger = logging.getLogger(__name__)

_VERSION = 1


class ResumeMismatchError(ValueError):
    """The results file belongs to a different run (dataset, method, config, protocol...)."""


class CorruptResultsError(ValueError):
    """A line of the results file, other than a torn last one, cannot be read; the file is unchanged."""


def _canonical(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _exists_error(path: Path) -> FileExistsError:
    return FileExistsError(
        f"results file {path} exists; pass `resume=True` to continue it or `overwrite=True` to start again."
    )


def _mismatch_error(path: Path, old: dict[str, Any], new: dict[str, Any], keys: Any) -> ResumeMismatchError | None:
    """The error for resuming `path` (header fingerprint `old`) with fingerprint `new`, compared on
    `keys` (both canonical); None if they agree."""
    diff = sorted(k for k in keys if old.get(k) != new.get(k))
    if not diff:
        return None
    named = [
        f"{k} {_label(old.get(k))} in the file, {_label(new.get(k))} in this run"
        for k in diff
        if _is_named(old.get(k), new.get(k))
    ]
    return ResumeMismatchError(
        f"cannot resume {path}: it was written by a different run (differs in {diff}"
        f"{': ' + '; '.join(named) if named else ''}); use another `out_dir` or `overwrite=True`."
    )


def _is_named(*values: Any) -> bool:
    """Whether the fingerprint values are short enough to quote, or settings with a ``name``
    (a protocol): a mismatch then names both."""
    return all(isinstance(v, (str, int, float, type(None))) or (isinstance(v, dict) and "name" in v) for v in values)


def _label(value: Any) -> str:
    """A fingerprint value as a mismatch message names it (a protocol by its name)."""
    if isinstance(value, dict):
        return repr(value["name"])
    return repr(value)


def check_results_file(
    path: str | os.PathLike, fingerprint: dict[str, Any], *, resume: bool = False, overwrite: bool = False
) -> None:
    """Raise now what `ResultStore` would for `path`, comparing only the keys of `fingerprint`
    (part of a run's fingerprint, e.g. what is known before a model loads). Writes nothing; a
    header that cannot be read is left for `ResultStore` to report.

    Raises:
        FileExistsError: `path` exists and neither `resume` nor `overwrite` is set.
        ResumeMismatchError: resuming a file whose header differs from `fingerprint` in one of its keys.
    """
    path = Path(path)
    if overwrite or not path.is_file():
        return
    if not resume:
        raise _exists_error(path)
    try:
        with open(path, "rb") as f:
            header = json.loads(f.readline().decode("utf-8"))
    except (OSError, ValueError):
        return
    old = header.get("fingerprint") if isinstance(header, dict) and header.get("type") == "header" else None
    if not isinstance(old, dict):
        return
    error = _mismatch_error(path, _canonical(old), _canonical(fingerprint), fingerprint)
    if error is not None:
        raise error


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
        CorruptResultsError: if resuming a file with a damaged line that is not the last one,
            bytes that are not UTF-8, or a record that is not an object with an integer
            ``index``; the message names the file and line, and the file is not modified.
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
                raise _exists_error(self.path)
            self._load()
        else:
            if resume and not self.path.exists():
                logger.info("nothing to resume at %s; starting a new run", self.path)
            self._write_header()

    @classmethod
    def read(cls, path: str | os.PathLike) -> ResultStore:
        """The records of an existing results file, read only (``fingerprint`` is its header's).

        Nothing is written, not even the repairs a resume makes: a torn last line is skipped.

        Raises:
            FileNotFoundError: `path` is not a file.
            ResumeMismatchError: it has no header line (not a diffuseg results file).
            CorruptResultsError: as for a resume (see the class docstring).
        """
        store = cls.__new__(cls)
        store.path, store.records, store._action = Path(path), {}, "read"
        if not store.path.is_file():
            raise FileNotFoundError(f"results file {store.path} does not exist.")
        header, _, _ = store._read()
        store.fingerprint = _canonical(header.get("fingerprint") or {})
        return store

    # ------------------------------------------------------------------ reading
    _action = "resume"  # what the errors say could not be done

    def _corrupt(self, lineno: int, problem: str) -> CorruptResultsError:
        return CorruptResultsError(
            f"cannot {self._action} {self.path}: line {lineno} {problem}. Only a torn last line (left by "
            f"a killed run) is dropped automatically; fix or delete line {lineno}, or start "
            f"again with `overwrite=True` or another `out_dir`. The file was not modified."
        )

    def _parse(self, lineno: int, raw: bytes, *, last: bool, terminated: bool) -> Any:
        """One line's JSON value, or None for a torn last line.

        Raises:
            CorruptResultsError: if the line is not UTF-8, or is not JSON and not the last line.
        """
        try:
            # An unterminated tail may end inside a multi-byte character: decode what is complete.
            text = codecs.getincrementaldecoder("utf-8")().decode(raw, final=terminated)
        except UnicodeDecodeError as e:
            raise self._corrupt(
                lineno, f"is not UTF-8 text (invalid byte {raw[e.start : e.start + 1]!r} at byte {e.start + 1})"
            ) from None
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            if last:
                return None
            raise self._corrupt(lineno, f"is not valid JSON ({e.msg} at column {e.colno})") from None

    def _read(self) -> tuple[dict[str, Any], list[tuple[int, int, int, bool]], int | None]:
        """Read the header and the records into ``records``; write nothing.

        Returns:
            The header, the non-blank lines (1-based number, start, end, has a newline) and, for
            a torn last line, the end of the good data before it (else None).

        Raises:
            ResumeMismatchError: no header line.
            CorruptResultsError: see the class docstring.
        """
        data = self.path.read_bytes()
        lines = []  # (1-based line number, start, end without the newline, has a newline)
        pos = lineno = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            end = len(data) if nl < 0 else nl
            lineno += 1
            if data[pos:end].strip():  # blank lines hold nothing; skip them
                lines.append((lineno, pos, end, nl >= 0))
            pos = end + 1
        header = None
        good_end = 0  # end of the last good line, newline included
        torn = False
        for i, (lineno, start, end, terminated) in enumerate(lines):
            obj = self._parse(lineno, data[start:end], last=i == len(lines) - 1, terminated=terminated)
            if obj is None:
                torn = True
                break
            good_end = end + 1 if terminated else end
            if header is None:
                header = obj
                continue
            if not isinstance(obj, dict):
                raise self._corrupt(lineno, f"is not a JSON object (got {type(obj).__name__})")
            if obj.get("type") == "image":
                index = obj.get("index")
                if not isinstance(index, int) or isinstance(index, bool):
                    raise self._corrupt(lineno, f"is an image record without an integer 'index' (got {index!r})")
                self.records[index] = obj
        if not isinstance(header, dict) or header.get("type") != "header":
            raise ResumeMismatchError(f"{self.path} is not a diffuseg results file (no header line).")
        return header, lines, good_end if torn else None

    def _load(self) -> None:
        """Read the header and records; drop a torn last line, or add the newline a complete one lacks.

        Raises:
            ResumeMismatchError: no header line, or a header for a different run.
            CorruptResultsError: see the class docstring; nothing is written then.
        """
        header, lines, good_end = self._read()
        old = header.get("fingerprint")
        old = _canonical(old if isinstance(old, dict) else {})
        error = _mismatch_error(self.path, old, self.fingerprint, set(old) | set(self.fingerprint))
        if error is not None:
            raise error
        if good_end is not None:
            logger.warning(
                "%s: dropping a torn last line (line %d, %d bytes)",
                self.path,
                lines[-1][0],
                self.path.stat().st_size - good_end,
            )
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
                f.flush()
                os.fsync(f.fileno())
        elif lines and not lines[-1][3]:  # a complete last record whose newline was not written
            self._append_bytes(b"\n")
        logger.info("resuming %s: %d images already done", self.path, len(self.records))

    # ------------------------------------------------------------------ writing
    def _append_bytes(self, data: bytes) -> None:
        with open(self.path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def _append(self, obj: dict[str, Any]) -> None:
        self._append_bytes((json.dumps(obj, separators=(",", ":")) + "\n").encode())

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
