"""CLI subcommands. Each module here defines ``register(subparsers)``; `diffuseg.cli` finds them.

``register`` adds one subparser (its one-line help is `COMMANDS[name]`) and sets ``func=run``
on it, where ``run(args) -> int`` returns the process exit code. Modules are imported only for
the subcommand being run, so ``diffuseg --help`` loads no torch.
"""

#: Subcommand -> one-line help, in the order ``diffuseg --help`` lists them.
COMMANDS = {
    "segment": "segment images and write label maps, overlays and JSON",
    "batch": "segment many images, here or on a Ray cluster (resumable)",
    "eval": "score a method on a benchmark dataset (mIoU, mAcc, fwIoU, aAcc, per-class IoU and accuracy)",
    "inspect": "picture of what a method sees from one pixel",
    "demo": "web demo: segment in the browser (needs the demo extra, Gradio)",
    "train": "train models shipped with diffuseg",
    "env": "print versions, devices, methods, model presets and locally available models",
}
