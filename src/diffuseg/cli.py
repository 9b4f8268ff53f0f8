"""`diffuseg` command line: ``diffuseg segment | eval | train | inspect | env``.

Every module in `diffuseg.commands` that defines ``register(subparsers)`` adds a subcommand.
`main` returns the exit code: 0 success, 1 some inputs failed, 2 bad usage or missing model.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from ._version import __version__

__all__ = ["main", "build_parser"]

logger = logging.getLogger("diffuseg")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every discovered subcommand."""
    from . import commands

    parser = argparse.ArgumentParser(
        prog="diffuseg", description="Segment images with the internals of text-to-image diffusion models."
    )
    parser.add_argument("--version", action="version", version=f"diffuseg {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    order = {"segment": 0, "eval": 1, "inspect": 2, "train": 3, "demo": 4, "env": 5}
    names = sorted((m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")),
                   key=lambda n: (order.get(n, 99), n))
    for name in names:
        module = importlib.import_module(f"{commands.__name__}.{name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def _quiet_dependencies() -> None:
    """Hide the weight-loading progress bars and advice of diffusers/transformers (CLI only)."""
    try:
        import diffusers
        import transformers

        diffusers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - cosmetics only
        pass


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with `argv` (default: sys.argv[1:]) and return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on bad usage, 0 on --help
        return int(e.code or 0)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.verbose == 0:
        _quiet_dependencies()
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
