"""``diffuseg demo [--model ID|PATH] [--host 127.0.0.1] [--port 7860]``: the web demo.

Serves `diffuseg.demo.app` on localhost (``--host`` to change, with a warning: anyone who can
reach the port can run the model). Needs the ``demo`` extra (Gradio). The model is loaded
before the server starts; if it fails to load, the page says why instead of the server
crashing. One request runs at a time (a queue), so two users never run two model passes at
once on one device. The flags, the address (``--host`` must be an address of this machine,
``--port`` free) and Gradio are checked before the model loads. Exit codes: 0 after the
server stops, 2 bad usage, an address that cannot be served or no Gradio.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from typing import Any

from . import COMMANDS
from ._options import finite_float

__all__ = ["register", "run", "LOCAL_HOSTS"]

logger = logging.getLogger(__name__)

#: Hosts that keep the demo on this machine (any other --host gets a warning).
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def register(subparsers: Any) -> None:
    from ._options import add_model_options

    p = subparsers.add_parser(
        "demo",
        help=COMMANDS["demo"],
        description="Start the web demo (Gradio): upload an image, pick a method and its settings, "
        "see the overlay, click a pixel to see what the model sees, download the label PNG and JSON.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 = any free port)")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="largest image accepted, width x height (default 16000000)",
    )
    p.add_argument("--max-upload-mb", type=finite_float, default=50.0, help="largest upload in MB (default 50)")
    add_model_options(p)
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    """Validate the flags before anything is loaded.

    Raises:
        ValueError: naming the flag.
    """
    from ._options import check_runtime

    check_runtime(args)
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in [0, 65535], got {args.port}.")
    if args.max_pixels is not None and args.max_pixels < 1:
        raise ValueError(f"--max-pixels must be >= 1, got {args.max_pixels}.")
    if args.max_upload_mb <= 0:
        raise ValueError(f"--max-upload-mb must be > 0, got {args.max_upload_mb}.")


def _bind_error(host: str, port: int, error: OSError) -> str:
    """Why `host`:`port` cannot be served, in flags."""
    reason = error.strerror or str(error)
    if error.errno == errno.EADDRINUSE:
        return f"--port {port} is already in use on {host}; choose another --port, or --port 0 for any free port."
    if error.errno == errno.EADDRNOTAVAIL:
        return (
            f"--host {host} is not an address of this machine ({reason}); use 127.0.0.1 (this machine only), "
            "0.0.0.0 (every interface) or one of this machine's addresses."
        )
    if error.errno == errno.EACCES:
        return (
            f"--port {port} is not allowed here ({reason}); ports below 1024 need privileges: choose a higher --port."
        )
    return f"cannot serve on --host {host} --port {port}: {reason}."


def _reserve(host: str, port: int) -> int:
    """The port to serve on (`port`, or a free one for 0), after binding `host`:`port` as the
    server will (SO_REUSEADDR): before the model loads, a bad address is said in flags.

    Raises:
        ValueError: naming --host (not an address of this machine) or --port (in use, not allowed).
    """
    import socket

    if not host.strip():
        raise ValueError("--host must be an address of this machine, e.g. 127.0.0.1; got ''.")
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise ValueError(
            f"--host {host!r} is neither an IP address nor a name this machine resolves ({reason}); "
            "use e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)."
        ) from None
    family, kind, proto, _, address = found[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as e:
            raise ValueError(_bind_error(host, port, e)) from None
        return int(sock.getsockname()[1])


def make_session(args: argparse.Namespace) -> Any:
    """A `DemoSession` for the model flags, its model loaded (or its load error kept)."""
    from ..backbone import DEFAULT_MODEL
    from ..demo.session import DEFAULT_MAX_PIXELS, DemoSession
    from ._options import load_backbone

    session = DemoSession(
        lambda: load_backbone(args),
        args.model or DEFAULT_MODEL,
        max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
        seed=args.seed if args.seed is not None else 0,
    )
    session.load_model()
    return session


def run(args: argparse.Namespace) -> int:
    from ._options import fail

    try:
        _check(args)
    except ValueError as e:
        return fail("demo", str(e))
    try:
        import gradio  # noqa: F401
    except ImportError:
        return fail("demo", "the web demo needs Gradio: pip install 'diffuseg[demo]' (./run installs it).")
    from ..demo.app import build_app, serve
    from ..demo.examples import bundled_examples

    try:
        port = _reserve(args.host, args.port)
    except ValueError as e:
        return fail("demo", str(e))
    if args.host not in LOCAL_HOSTS:
        logger.warning(
            "serving on --host %s: anyone who can reach this port can upload images and run the model", args.host
        )
    session = make_session(args)
    if session.load_error:
        print(f"diffuseg demo: {session.load_error} (the page shows this)", file=sys.stderr)
    app = build_app(session, bundled_examples())
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"diffuseg demo: model {session.model_name}; open http://{shown}:{port}/", file=sys.stderr, flush=True)
    try:
        serve(app, session, args.host, port, int(args.max_upload_mb * 1e6))
    except OSError as e:  # the port was taken between the check and the server's start
        logger.debug("the server did not start: %s", e)
        taken = "empty port" in str(e)  # Gradio's words, which advise its environment variable instead
        return fail("demo", _bind_error(args.host, port, OSError(errno.EADDRINUSE, "in use") if taken else e))
    return 0
