"""Device names -> the device to use: one rule for the server, training and evaluation."""

from __future__ import annotations

import torch


def resolve_device(device: str) -> str:
    """``auto`` -> cuda/cpu; refuses a CUDA/MPS request the host cannot serve (fail at start, not mid-run)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r} requested but only {torch.cuda.device_count()} GPU(s) present"
            )
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' requested but MPS is not available")
    return device
