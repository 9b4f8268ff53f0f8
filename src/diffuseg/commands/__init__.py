"""CLI subcommands. Each module here defines ``register(subparsers)``; `diffuseg.cli` finds them.

``register`` adds one subparser and sets ``func=run`` on it, where ``run(args) -> int`` returns
the process exit code.
"""
