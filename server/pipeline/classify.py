"""Emotion classification of face crops with the checkpoint's model."""

from __future__ import annotations

from pathlib import Path

import torch

from server.model.checkpoint import DEFAULT_CHECKPOINT, CheckpointMeta, file_digest, load_checkpoint
from server.pipeline.preprocess import normalize


class EmotionClassifier:
    """Wraps the model with the normalisation its checkpoint prescribes.

    Input crops are (N, 1, S, S) grayscale in [0, 255] at ``meta.input_size``; output
    probabilities are (N, C) in ``meta.classes`` order.
    """

    def __init__(
        self, checkpoint: str | Path = DEFAULT_CHECKPOINT, device: str | torch.device = "cpu"
    ) -> None:
        self.device = torch.device(device)
        self.model, self.meta = load_checkpoint(checkpoint, self.device)
        self.model = self.model.to(memory_format=torch.channels_last)
        self.version = f"{self.meta.version}-{file_digest(checkpoint)}"
        self.half = self.device.type == "cuda"
        if self.half:
            self.model = self.model.half()

    @property
    def classes(self) -> list[str]:
        return self.meta.classes

    @property
    def input_size(self) -> int:
        return self.meta.input_size

    @torch.inference_mode()
    def predict(self, crops: torch.Tensor) -> torch.Tensor:
        if crops.shape[0] == 0:
            return torch.zeros((0, len(self.classes)))
        x = normalize(crops.to(self.device), self.meta.mean, self.meta.std).contiguous(
            memory_format=torch.channels_last
        )
        if self.half:
            x = x.half()
        return self.model(x).float().softmax(1).cpu()


__all__ = ["CheckpointMeta", "EmotionClassifier"]
