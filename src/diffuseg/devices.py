"""Checking a user-given torch device against what this machine has, before any work is done."""

from __future__ import annotations

import torch

__all__ = ["available_devices", "available_bytes", "check_device"]

#: Names people type for a GPU that torch does not know.
_GPU_WORDS = ("gpu", "nvidia", "rocm", "amd", "apple", "metal")


def available_devices() -> list[str]:
    """The devices diffuseg can run on here, e.g. ``["cpu", "cuda:0", "cuda:1"]`` or ``["cpu", "mps"]``.

    Returns:
        ``"cpu"``, then ``"cuda:i"`` for each CUDA (or ROCm) device, ``"mps"`` where Apple's Metal is
        available, and ``"xpu:i"`` for each Intel GPU.
    """
    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        out += [f"xpu:{i}" for i in range(xpu.device_count())]
    return out


def _count(n: int, kind: str, prefix: str) -> str:
    names = ", ".join(f"{prefix}:{i}" for i in range(n))
    return f"this machine has {n} {kind} device{'s' if n != 1 else ''} ({names})"


def check_device(device: str | torch.device) -> torch.device:
    """Check that `device` exists on this machine and return it as a `torch.device`.

    Args:
        device: a torch device or its name: ``"cpu"``, ``"cuda"`` (the current CUDA device),
            ``"cuda:N"``, ``"mps"``, ``"xpu"`` / ``"xpu:N"``.

    Returns:
        ``torch.device(device)``, unchanged (``"cuda"`` stays without an index).

    Raises:
        ValueError: `device` is not a device name (e.g. ``"gpu"``, ``"tpu"``, ``"cuda:x"``), or names a
            device this machine lacks: CUDA/MPS/XPU unavailable, or ``cuda:N`` with N >= the number
            of CUDA devices; or a device type diffuseg does not run on (``"meta"``, ``"hpu"``, ...).
            The message names `device`, its value and the devices that are available.
        TypeError: `device` is neither a string nor a `torch.device`.
    """
    if not isinstance(device, (str, torch.device)):
        raise TypeError(
            f"`device` must be a device name such as 'cpu' or 'cuda:0', or a torch.device; "
            f"got {type(device).__name__} {device!r}."
        )
    available = ", ".join(available_devices())

    def bad(reason: str) -> ValueError:
        return ValueError(f"`device` {str(device)!r} is not usable: {reason}. Available on this machine: {available}.")

    if isinstance(device, torch.device):
        dev = device
    else:
        try:
            dev = torch.device(device)
        except RuntimeError as e:
            name = device.strip().lower().split(":")[0]
            if name != device.split(":")[0] and name in ("cpu", "cuda", "mps", "xpu"):
                hint = f"device names are lower case without spaces, e.g. {name!r}"
            elif name in _GPU_WORDS:
                hint = (
                    "it is not a torch device name: for an NVIDIA or AMD GPU use 'cuda' (or 'cuda:N'), "
                    "for an Apple-silicon GPU 'mps'"
                )
            elif name in ("cpu", "cuda", "mps", "xpu"):
                hint = f"the index after ':' must be a whole number >= 0, e.g. '{name}:0'"
            else:
                hint = "it is not a torch device name (those are cpu, cuda, cuda:N, mps, xpu, xpu:N)"
            raise bad(hint) from e

    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
                raise bad("this PyTorch build has no CUDA support (install a CUDA build of torch)")
            raise bad("CUDA is not available (no CUDA device or driver was found)")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise bad(_count(n, "CUDA", "cuda"))
        return dev
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            built = mps is not None and mps.is_built()
            raise bad(
                "MPS (the Apple-silicon GPU) is not available"
                + ("" if built else "; this PyTorch build has no MPS support")
            )
        if dev.index not in (None, 0):
            raise bad("there is a single MPS device, 'mps' (or 'mps:0')")
        return dev
    if dev.type == "xpu":
        xpu = getattr(torch, "xpu", None)
        if xpu is None or not xpu.is_available():
            raise bad("no Intel GPU (XPU) is available")
        n = xpu.device_count()
        if dev.index is not None and dev.index >= n:
            raise bad(_count(n, "XPU", "xpu"))
        return dev
    raise bad(f"diffuseg does not run on {dev.type!r} devices")


def available_bytes(device: str | torch.device) -> int | None:
    """Memory free for new tensors on `device`, in bytes: ``MemAvailable`` of /proc/meminfo on
    the CPU, ``torch.cuda.mem_get_info`` on CUDA; None where it cannot be read (MPS, others)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        import os

        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None
