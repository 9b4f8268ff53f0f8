"""`diffuseg` command line: ``diffuseg segment | batch | eval | inspect | demo | train | env``.

Every subcommand in `diffuseg.commands.COMMANDS` (those above, in ``diffuseg --help`` order) is
a module there with ``register(subparsers)``.
`main` returns the exit code: 0 success, 1 some inputs failed, 2 bad usage or missing model.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ._version import __version__

__all__ = ["main", "build_parser"]

logger = logging.getLogger("diffuseg")


def _command_in(argv: list[str]) -> str | None:
    """The subcommand named in `argv` (the first word that is one), or None."""
    from .commands import COMMANDS

    return next((a for a in argv if a in COMMANDS), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The top-level parser. With `argv`, only the subcommand it names is built in full (the
    others get a stub with their one-line help), so ``diffuseg --help`` imports no torch."""
    from .commands import COMMANDS

    parser = argparse.ArgumentParser(
        prog="diffuseg", description="Segment images with the internals of text-to-image diffusion models."
    )
    parser.add_argument("--version", action="version", version=f"diffuseg {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = _command_in(argv) if argv is not None else None
    for name, help_ in COMMANDS.items():
        if argv is not None and name != chosen:
            sub.add_parser(name, help=help_)
            continue
        module = importlib.import_module(f"diffuseg.commands.{name}")
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
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
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
        hint = getattr(args, "resume_hint", None)
        print(f"interrupted; {hint}" if hint else "interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
