"""Which torch device to run on: the one place that turns ``base.device`` / ``--device`` into a device."""

from __future__ import annotations

import torch

from retinaseg.core.errors import RetinasegError


class DeviceError(RetinasegError, RuntimeError):
    """A device that was asked for and is not there (names the flag that changes it)."""


def resolve_device(requested: str | torch.device) -> torch.device:
    """``auto`` → cuda > mps > cpu; an explicit device that is absent → :class:`DeviceError` naming the flag.

    A ``torch.device`` (or a string such as ``"cuda:1"``) is passed through after the same check.
    """
    if isinstance(requested, torch.device):
        requested = str(requested)
    has_mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if has_mps else "cpu")
    kind = requested.split(":", 1)[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            "device 'cuda' was requested but torch.cuda.is_available() is False; "
            "set base.device=auto or cpu (-S base.device=cpu)"
        )
    if kind == "mps" and not has_mps:
        raise DeviceError(
            "device 'mps' was requested but torch.backends.mps.is_available() is False; "
            "set base.device=auto or cpu (-S base.device=cpu)"
        )
    if kind not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"unknown device {requested!r}; expected auto | cpu | cuda | mps (base.device)")
    return torch.device(requested)
