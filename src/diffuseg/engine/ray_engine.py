"""The ``ray`` engine: units of work through a Ray Data pipeline.

Stages: the units (lists of items, one row each, cut by `work.make_units` exactly as the local
engine cuts them) -> decode on CPU tasks -> an actor pool, one worker (backbone + segmenter)
per actor, built once in the actor's constructor -> a writer on CPU tasks -> the driver, which
logs each unit's records and shows progress. Actors are restarted and their unit retried when
a worker process dies (``max_restarts`` / ``max_task_retries``): nothing is lost, and as every
write is atomic and every image's noise is its own, a retried unit writes the same bytes. A
unit that kills its worker every time is started at most `MAX_ATTEMPTS` times (counted by a
small ledger actor); then its items fail with that reason (`give_up`) and the others go on.

Ray is imported here only; `diffuseg` works without it. Without an address a local Ray
instance is started (and shut down at the end); ``auto`` or ``[ray://]HOST:PORT`` connects to a
running cluster, refusing within `CONNECT_TIMEOUT_S` an address where nothing answers (and
within twice that one that answers but is not a Ray cluster).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = [
    "connect", "session", "cluster_cpus", "run_units", "RayOptions", "CONNECT_TIMEOUT_S", "MAX_ATTEMPTS",
    "WorkerDiedError",
]  # fmt: skip

logger = logging.getLogger(__name__)

#: Seconds to wait for a cluster address to answer before giving up.
CONNECT_TIMEOUT_S = 5.0
#: CPUs each decode / write task asks for (they are short; the actors hold the model). As many
#: of each run at once as there are actors, and CPU-only actors leave them their CPUs (so a
#: writer is never starved by the actors and the decoders).
IO_TASK_CPUS = 0.1
#: Times a unit may be started on a worker; a unit whose worker process died this often (out of
#: memory, a crash in native code) is given up: its items fail alone and the run goes on.
MAX_ATTEMPTS = 3
#: Environment of the actors: no download / weight-loading progress bars in the driver's log.
_QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}


class WorkerDiedError(RuntimeError):
    """The Ray pipeline failed (a unit whose worker kept dying, an actor that cannot start)."""


class RayOptions:
    """Actor-pool settings (validated once, here).

    Args:
        actors: actors in the pool (one backbone each), >= 1.
        gpus_per_actor: GPUs each actor reserves (0: CPU only; 0.5: two actors per GPU).
        cpus_per_actor: CPUs each actor reserves; None: 1 with GPUs, else an equal share of the
            cluster's CPUs less those of the decode and write tasks (at most 1).
        address: None (start a local instance), ``auto`` or ``[ray://]HOST:PORT``.
        num_cpus: CPUs of a local instance (None: all of this machine's).
        threads: torch threads per actor (None: see `actor_threads`).

    Raises:
        ValueError: naming the bad argument.
    """

    def __init__(
        self,
        actors: int = 1,
        gpus_per_actor: float = 0.0,
        cpus_per_actor: float | None = None,
        address: str | None = None,
        num_cpus: int | None = None,
        threads: int | None = None,
    ) -> None:
        if isinstance(actors, bool) or not isinstance(actors, int) or actors < 1:
            raise ValueError(f"`actors` must be an int >= 1, got {actors!r}.")
        if not isinstance(gpus_per_actor, (int, float)) or not (0 <= gpus_per_actor) or math.isnan(gpus_per_actor):
            raise ValueError(f"`gpus_per_actor` must be a number >= 0, got {gpus_per_actor!r}.")
        if cpus_per_actor is not None and not (isinstance(cpus_per_actor, (int, float)) and cpus_per_actor > 0):
            raise ValueError(f"`cpus_per_actor` must be a number > 0, got {cpus_per_actor!r}.")
        if num_cpus is not None and (not isinstance(num_cpus, int) or num_cpus < 1):
            raise ValueError(f"`num_cpus` must be an int >= 1, got {num_cpus!r}.")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"`threads` must be an int >= 1, got {threads!r}.")
        self.threads = threads
        self.actors = actors
        self.gpus_per_actor = float(gpus_per_actor)
        self.cpus_per_actor = cpus_per_actor
        self.address = address
        self.num_cpus = num_cpus

    def actor_cpus(self, cluster_cpus: float) -> float:
        """The CPUs each actor reserves on a cluster with `cluster_cpus` CPUs.

        Raises:
            ValueError: naming `actors`, when CPU-only actors leave no CPU for decoding.
        """
        if self.cpus_per_actor is not None:
            return float(self.cpus_per_actor)
        if self.gpus_per_actor > 0:
            return 1.0
        io = 2 * self.actors * IO_TASK_CPUS  # a decoder and a writer per actor
        share = (cluster_cpus - io) / self.actors
        if share < 0.1:
            raise ValueError(
                f"`actors` {self.actors} CPU-only actors do not fit in the cluster's {cluster_cpus:g} CPUs "
                f"(each needs >= 0.1, and {io:g} stay free for decoding and writing)."
            )
        return min(1.0, share)

    def actor_threads(self, cluster_cpus: float) -> int:
        """torch threads per actor: `threads` if given; CPU-only actors share the CPUs (1 each
        when actors >= CPUs); GPU actors get one."""
        if self.threads is not None:
            return self.threads
        if self.gpus_per_actor > 0:
            return 1
        return max(1, int(cluster_cpus // self.actors))


def _quiet() -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    for flag in ("enable_progress_bars", "enable_operator_progress_bars", "enable_auto_log_stats"):
        if hasattr(ctx, flag):
            setattr(ctx, flag, False)
    if hasattr(ctx, "verbose_stats_logs"):
        ctx.verbose_stats_logs = False
    memory = getattr(getattr(ctx, "issue_detectors_config", None), "high_memory_detector_config", None)
    if memory is not None:  # "uses 256 MiB per worker": the torch import of decoders and writers
        memory.detection_time_interval_s = -1
    for name in ("ray", "ray.data", "ray.data._internal"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"


def _host_port(address: str) -> tuple[str, int]:
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"`address` must be 'auto' or [ray://]HOST:PORT, got {address!r}.")
    return host.strip("[]"), int(port)


def connect(address: str | None = None, num_cpus: int | None = None, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Connect to Ray: a cluster at `address`, or a new local instance (`num_cpus` CPUs); a
    process already connected keeps its connection. Returns True if this call connected (the
    caller shuts Ray down after).

    Raises:
        ValueError: a malformed `address`.
        ConnectionError: naming `address`, if nothing answers there within `timeout` seconds.
    """
    import ray

    if address is not None and address != "auto":
        host, port = _host_port(address)
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as e:
            raise ConnectionError(
                f"`address` {address}: nothing answers at {host}:{port} within {timeout:g} s ({e.strerror or e}); "
                "start a cluster with `ray start --head` or give its address."
            ) from None
    if ray.is_initialized():  # this process is connected already (a notebook, the tests): use it
        _quiet()
        return False
    if address is None:
        ray.init(num_cpus=num_cpus, logging_level=logging.WARNING, include_dashboard=False)
        _quiet()
        return True
    _init_within(address, 2 * timeout)
    _quiet()
    return True


class _DropMessage(logging.Filter):
    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


def _init_within(address: str, timeout: float) -> None:
    """``ray.init(address)``, given up after `timeout` seconds (something that accepts TCP
    connections but is not a Ray cluster makes Ray retry for long). Ray connects from a daemon
    thread, which a timed-out call leaves behind.

    Raises:
        ConnectionError: naming `address`.
    """
    import ray

    outcome: dict[str, BaseException | None] = {}

    def init() -> None:
        try:
            ray.init(address=address, logging_level=logging.WARNING)
            outcome["error"] = None
        except BaseException as e:  # handed to the caller
            outcome["error"] = e

    thread = threading.Thread(target=init, name="ray-connect", daemon=True)
    worker_log = logging.getLogger("ray._private.worker")
    not_main = _DropMessage("SIGTERM handler is not set")  # Ray's note about the thread
    worker_log.addFilter(not_main)
    try:
        thread.start()
        thread.join(timeout)
    finally:
        worker_log.removeFilter(not_main)
    if "error" not in outcome:
        raise ConnectionError(f"`address` {address}: no Ray cluster answered within {timeout:g} s.")
    error = outcome["error"]
    if isinstance(error, (ConnectionError, RuntimeError)):
        raise ConnectionError(f"`address` {address}: cannot connect to a Ray cluster: {error}") from None
    if error is not None:
        raise error


# ------------------------------------------------------------------ pipeline stages (picklable)
def _decode_row(row: dict[str, Any], decode: Callable[[Any], Any]) -> dict[str, Any]:
    return {"unit": row["unit"], "payload": pickle.dumps(decode(pickle.loads(row["payload"])))}


class _AttemptLedger:
    """How many times each unit has been started on a worker (a Ray actor, one per run)."""

    def __init__(self) -> None:
        self.started: dict[int, int] = {}

    def begin(self, unit: int) -> int:
        """Count a start of `unit`; returns how many there have been, this one included."""
        self.started[unit] = self.started.get(unit, 0) + 1
        return self.started[unit]


class _UnitActor:
    """Holds one worker (built once); turns a decoded unit into its outcomes, or gives the unit
    up when its workers died on it `MAX_ATTEMPTS` times already."""

    def __init__(
        self, factory: Callable[..., Any], args: Sequence[Any], ledger: Any, give_up: Callable[[Any, str], Any]
    ) -> None:
        for var, value in _QUIET_ENV.items():
            os.environ.setdefault(var, value)
        self.worker = factory(*args)
        self.ledger, self.give_up = ledger, give_up

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        import ray

        decoded = pickle.loads(row["payload"])
        attempt = ray.get(self.ledger.begin.remote(row["unit"]))
        if attempt > MAX_ATTEMPTS:
            reason = (
                f"the worker process died {MAX_ATTEMPTS} times segmenting this image's batch (out of memory, or a "
                "crash in native code); left out, retried on the next run"
            )
            logger.error("unit %d: %s", row["unit"], reason)
            return {"unit": row["unit"], "payload": pickle.dumps(self.give_up(decoded, reason))}
        return {"unit": row["unit"], "payload": pickle.dumps(self.worker(decoded))}


def _write_row(row: dict[str, Any], write: Callable[[Any], Any]) -> dict[str, Any]:
    return {"unit": row["unit"], "payload": pickle.dumps(write(pickle.loads(row["payload"])))}


def run_units(
    units: Sequence[Any],
    *,
    decode: Callable[[Any], Any],
    worker: tuple[Callable[..., Any], Sequence[Any]],
    write: Callable[[Any], Any] | None,
    on_result: Callable[[Any], None],
    options: RayOptions,
    give_up: Callable[[Any, str], Any],
) -> None:
    """Run `units` through decode -> actor pool -> write, calling `on_result` on the driver with
    each unit's written result, in completion order. All callables must pickle (module-level).

    Args:
        units: the units (lists of items).
        decode: unit -> decoded unit (CPU tasks).
        worker: (factory, args): each actor builds ``factory(*args)``, a callable decoded unit ->
            outcomes.
        write: outcomes -> result (CPU tasks); None: the outcomes go to `on_result`.
        on_result: called on the driver per unit; an exception it raises stops the run.
        options: the pool (`RayOptions`); Ray must be connected (`connect`).
        give_up: (decoded unit, reason) -> the outcomes of a unit that is not segmented
            because its worker died on it `MAX_ATTEMPTS` times (each item failed, with reason).

    Raises:
        WorkerDiedError: a unit that failed after the actor restarts and retries.
    """
    import ray
    import ray.data

    if not units:
        return
    actor_cpus = options.actor_cpus(cluster_cpus())
    rows = [{"unit": k, "payload": pickle.dumps(unit)} for k, unit in enumerate(units)]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    size = min(options.actors, len(units))  # more actors than units would idle (and Ray warns)
    io = ray.data.TaskPoolStrategy(size=size)  # as many decoders / writers as actors: few processes
    ds = ds.map(_decode_row, fn_kwargs={"decode": decode}, num_cpus=IO_TASK_CPUS, compute=io)
    ledger = ray.remote(_AttemptLedger).options(num_cpus=0).remote()
    ds = ds.map(  # Ray Data restarts a dead actor and retries its task (max_restarts = max_task_retries = -1)
        _UnitActor,
        fn_constructor_kwargs={
            "factory": worker[0],
            "args": tuple(worker[1]),
            "ledger": ledger,
            "give_up": give_up,
        },  # fmt: skip
        compute=ray.data.ActorPoolStrategy(size=size),
        num_cpus=actor_cpus,
        num_gpus=options.gpus_per_actor or None,
    )
    if write is not None:
        ds = ds.map(_write_row, fn_kwargs={"write": write}, num_cpus=IO_TASK_CPUS, compute=io)
    logger.info(
        "ray: %d unit(s), %d actor(s) x (%g CPU, %g GPU)",
        len(units),
        options.actors,
        actor_cpus,
        options.gpus_per_actor,
    )
    try:
        for row in ds.iter_rows():
            on_result(pickle.loads(row["payload"]))
    except ray.exceptions.RayError as e:
        raise WorkerDiedError(f"the Ray pipeline failed: {e}") from e


@contextlib.contextmanager
def session(options: RayOptions) -> Iterator[float]:
    """Connected to Ray for the block (`connect`; shut down after if this call connected);
    yields the cluster's CPUs."""
    import ray

    started = connect(options.address, options.num_cpus)
    try:
        yield cluster_cpus()
    finally:
        if started:
            ray.shutdown()


def cluster_cpus() -> float:
    """The CPUs of the connected Ray cluster."""
    import ray

    return float(ray.cluster_resources().get("CPU", 0.0))
