"""``diffuseg demo [--model ID|PATH] [--host 127.0.0.1] [--port 7860]``: the web demo.

Serves `diffuseg.demo.app` on localhost (``--host`` to change, with a warning: anyone who can
reach the port can run the model). Needs the ``demo`` extra (Gradio). The model is loaded
before the server starts; if it fails to load, the page says why instead of the server
crashing. One request runs at a time (a queue), so two users never run two model passes at
once on one device. Exit codes: 0 after the server stops, 2 bad usage or no Gradio.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from . import COMMANDS

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
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="largest upload in MB (default 50)")
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


def _free_port(host: str) -> int:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
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

    if args.host not in LOCAL_HOSTS:
        logger.warning(
            "serving on --host %s: anyone who can reach this port can upload images and run the model", args.host
        )
    session = make_session(args)
    if session.load_error:
        print(f"diffuseg demo: {session.load_error} (the page shows this)", file=sys.stderr)
    app = build_app(session, bundled_examples())
    port = args.port or _free_port(args.host)
    print(f"diffuseg demo: model {session.model_name}; open http://{args.host}:{port}/", file=sys.stderr, flush=True)
    serve(app, session, args.host, port, int(args.max_upload_mb * 1e6))
    return 0
