"""Emotion classification of face crops with the checkpoint's model."""

from __future__ import annotations

from pathlib import Path

import torch

from server.model.checkpoint import (
    DEFAULT_CHECKPOINT,
    CheckpointMeta,
    file_digest,
    int8_build,
    load_checkpoint,
    shift_scores,
)
from server.pipeline.backend import Precision, compile_module
from server.pipeline.preprocess import normalize


class EmotionClassifier:
    """Wraps the model with the normalisation its checkpoint prescribes.

    Input crops are (N, 1, S, S) grayscale in [0, 255] at ``meta.input_size``; output
    probabilities are (N, C) in ``meta.classes`` order. With ``flip_tta`` each crop's
    probabilities are averaged with its mirror image's (one batch of 2N), as
    ``emotion-eval --tta flip`` does. ``cache_dir`` keeps the OpenVINO build of the model
    (:func:`~server.pipeline.backend.compile_module`). With OpenVINO and ``precision="auto"``, the
    checkpoint's int8 build runs where one sits beside it
    (:func:`~server.model.checkpoint.int8_build`) and was made from these weights. With
    ``prior_shift`` the checkpoint's prior shift, if it has one, is applied to the scores
    (:meth:`~server.model.checkpoint.CheckpointMeta.shifted`).
    """

    def __init__(
        self,
        checkpoint: str | Path = DEFAULT_CHECKPOINT,
        device: str | torch.device = "cpu",
        backend: str = "torch",
        threads: int | None = None,
        precision: Precision = "auto",
        flip_tta: bool = False,
        cache_dir: str | Path | None = None,
        prior_shift: bool = True,
    ) -> None:
        self.device = torch.device(device)
        self.model, self.meta = load_checkpoint(checkpoint, self.device)
        self.model = self.model.to(memory_format=torch.channels_last)
        self.version = f"{self.meta.version}-{file_digest(checkpoint)}"
        self.flip_tta = flip_tta
        self.prior_shift = prior_shift and bool(self.meta.prior_shift)
        # made once: building it per call (CheckpointMeta.shifted) costs ~20 us of a ~2 ms face
        self._shift = self.meta.shift_vector()
        self.half = self.device.type == "cuda"
        if self.half:
            self.model = self.model.half()
        self.backend = backend
        size = self.meta.input_size
        example = torch.zeros((1, self.meta.in_channels, size, size), device=self.device)
        self.model = compile_module(
            self.model, example, backend, threads, precision, cache_dir, int8=int8_build(checkpoint)
        )

    @property
    def classes(self) -> list[str]:
        return self.meta.classes

    @property
    def input_size(self) -> int:
        return self.meta.input_size

    @torch.inference_mode()
    def predict(self, crops: torch.Tensor) -> torch.Tensor:
        n = crops.shape[0]
        if n == 0:
            return torch.zeros((0, len(self.classes)))
        x = normalize(crops.to(self.device), self.meta.mean, self.meta.std)
        if self.flip_tta:
            x = torch.cat([x, x.flip(3)])
        x = x.contiguous(memory_format=torch.channels_last)
        if self.half:
            x = x.half()
        p: torch.Tensor = self.model(x).float().softmax(1)
        if self.flip_tta:
            p = (p[:n] + p[n:]) / 2
        p = p.cpu()
        return shift_scores(p, self._shift) if self.prior_shift else p


__all__ = ["CheckpointMeta", "EmotionClassifier"]
