"""MediaPipe's BlazeFace run by OpenVINO on the CPU (the ``"blazeface"`` backend's proposals).

Why: on the CPU the res10 SSD at 300x300 is most of a request's time (~11 ms of a ~22 ms round
trip on 2 cores, docs/benchmarks.md), and it misses a third of the 40 px faces. Two BlazeFace
networks (~5 ms together here) find more of the small faces: the short-range model (128x128)
for faces that fill much of the image (webcam selfies, portraits), the back-camera model at
320x256 (or 256x320, 320x320 by the image's shape) for faces down to ~40 px in a 640x480 frame.
Each image goes through both; the short-range model owns the large faces and the back model the
small ones (:data:`SHORT_MIN`, :data:`LONG_MAX`), because each invents fragments of faces
outside its range. The boxes are then mapped to the SSD's framing (:data:`FRAMING`): the
classifier was trained on crops of SSD boxes, which are taller than BlazeFace's squares. Even
so, classifying BlazeFace's own boxes costs ~1.5 points on real photos, so the server uses these
faces as proposals that the SSD confirms and frames (:class:`server.pipeline.roi.ProposedRegions`).

The networks are OpenVINO-only (it reads ``.tflite`` directly); there is no torch port, so
GPUs and ``EMOTION_BACKEND=torch`` use the SSD (``EMOTION_DETECTOR=auto``). The files are in
``server/checkpoints/blazeface`` (Apache-2.0, see its README).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from server.pipeline.detect.inputs import as_rgb
from server.pipeline.detect.options import DetectorOptions
from server.pipeline.types import Detections

MODEL_DIR = Path(__file__).resolve().parents[2] / "checkpoints" / "blazeface"


@dataclass(frozen=True)
class Range:
    """One BlazeFace network: its file, its anchor layout and the input shapes it is run at.

    ``strides``: (stride, anchors per cell) per output layer group, as MediaPipe's
    ``SsdAnchorsCalculator`` options give them for the model (layers of equal stride merged).
    ``shapes``: (width, height) inputs, multiples of 64 so every stride's cells align with the
    input; an image is letterboxed into the one closest to its aspect ratio.
    """

    file: str
    strides: tuple[tuple[int, int], ...]
    shapes: tuple[tuple[int, int], ...]


RANGES: dict[str, Range] = {
    "short": Range("face_detection_short_range.tflite", ((8, 2), (16, 6)), ((128, 128),)),
    "long": Range("face_detection_back.tflite", ((16, 2), (32, 6)), ((320, 256), (256, 320), (320, 320))),
}
#: The short-range model's faces are kept from this width up, as a share of the image's longer
#: side; the back model's below :data:`LONG_MAX` of it (and where no short-range face is).
SHORT_MIN = 0.15
LONG_MAX = 0.3
#: How much further back the short-range model looks again when it found no face.
ZOOM_OUT = 1.6
#: Candidates per network kept for NMS, best first (bounds the work when a caller asks for every
#: score, ``min_confidence=0``; OpenCV's SSD keeps 400 of its 8,732).
TOP_K = 100
#: Greedy NMS overlap, MediaPipe's ``min_suppression_threshold`` for these models.
NMS_IOU = 0.3
#: BlazeFace box -> SSD-framed box, per range: (centre dx, centre dy, width, height), all in units
#: of the BlazeFace box's width. Medians over realfaces-dev photos whose SSD and BlazeFace boxes
#: were paired (``bench/blazeface_framing.py``).
FRAMING: dict[str, tuple[float, float, float, float]] = {
    "short": (-0.003, -0.1, 0.906, 1.089),
    "long": (0.01, -0.127, 0.967, 1.165),
}


def anchor_centres(width: int, height: int, strides: tuple[tuple[int, int], ...]) -> np.ndarray:
    """(N, 2) anchor centres in input pixels, in the network's output order (layer, row, column,
    anchor): MediaPipe's fixed-size anchors, whose only parameter is the centre."""
    out = []
    for stride, per_cell in strides:
        rows, cols = math.ceil(height / stride), math.ceil(width / stride)
        ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        centres = np.stack([(xs + 0.5) * stride, (ys + 0.5) * stride], -1).reshape(-1, 1, 2)
        out.append(np.repeat(centres, per_cell, axis=1).reshape(-1, 2))
    return np.concatenate(out).astype(np.float32)


class _Network:
    """One range at one input shape: compiled model (uint8 NHWC in, [-1, 1] scaling inside), anchors."""

    def __init__(self, core: Any, rng: Range, shape: tuple[int, int], config: dict[str, Any]) -> None:
        import openvino as ov
        from openvino.preprocess import PrePostProcessor

        width, height = shape
        model = core.read_model(str(MODEL_DIR / rng.file))
        model.reshape({model.inputs[0]: [1, height, width, 3]})
        ppp = PrePostProcessor(model)
        ppp.input().tensor().set_element_type(ov.Type.u8)
        ppp.input().preprocess().convert_element_type(ov.Type.f32).mean(127.5).scale(127.5)
        self.compiled = core.compile_model(ppp.build(), "CPU", config)
        outputs = list(self.compiled.outputs)
        self._boxes = next(o for o in outputs if o.get_partial_shape()[2].get_length() == 16)
        self._logits = next(o for o in outputs if o.get_partial_shape()[2].get_length() == 1)
        self.shape = shape
        self.anchors = anchor_centres(width, height, rng.strides)
        self._local = threading.local()

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(1, H, W, 3) uint8 -> (N, 4) boxes (cx, cy, w, h) in input pixels, (N,) logits."""
        request = getattr(self._local, "request", None)
        if request is None:  # OpenVINO infer requests are not reentrant: one per calling thread
            request = self._local.request = self.compiled.create_infer_request()
        out = request.infer({0: batch})
        raw = out[self._boxes][0]
        boxes = np.concatenate([raw[:, :2] + self.anchors, raw[:, 2:4]], 1)
        return boxes, out[self._logits][0, :, 0]


class BlazeFaceDetector:
    """BlazeFace short-range + back-camera models under OpenVINO, CPU only.

    ``options.input_size`` is unused (the networks' inputs are fixed, see :data:`RANGES`).
    """

    name = "blazeface"

    def __init__(
        self,
        options: DetectorOptions | None = None,
        device: str | torch.device = "cpu",
        threads: int | None = None,
        precision: str = "auto",
    ) -> None:
        if torch.device(device).type != "cpu":
            raise ValueError("the blazeface detector runs on the CPU only (OpenVINO); use ssd on GPUs")
        try:
            import openvino as ov
        except ImportError as exc:
            raise ValueError("the blazeface detector needs openvino (pip install openvino)") from exc
        self.options = options or DetectorOptions()
        self.device = torch.device("cpu")
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if precision == "f32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        core = ov.Core()
        self.networks = {
            name: [_Network(core, RANGES[name], shape, config) for shape in RANGES[name].shapes]
            for name in RANGES
        }

    def _run(
        self, name: str, rgb: np.ndarray, threshold: float, zoom: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """One range on one HxWx3 image: (K, 4) x1y1x2y2 boxes in image pixels, (K,) scores.

        The image is letterboxed into the input (top-left, black around); ``zoom`` > 1 shrinks it
        by that factor more, centred, as if the camera stood further back.
        """
        h, w = rgb.shape[:2]
        net = min(self.networks[name], key=lambda n: abs(math.log((n.shape[0] / n.shape[1]) / (w / h))))
        net_w, net_h = net.shape
        scale = min(net_w / w, net_h / h) / zoom
        new_w, new_h = max(1, min(net_w, round(w * scale))), max(1, min(net_h, round(h * scale)))
        resized = _resized(rgb, new_w, new_h)
        ox, oy = (0, 0) if zoom == 1.0 else ((net_w - new_w) // 2, (net_h - new_h) // 2)
        batch = np.zeros((1, net_h, net_w, 3), np.uint8)
        batch[0, oy : oy + new_h, ox : ox + new_w] = resized
        boxes, logits = net(batch)
        scores = (1 / (1 + np.exp(-np.clip(logits, -80, 80)))).astype(np.float32)  # no float32 overflow
        keep = scores >= threshold
        boxes, scores = boxes[keep], scores[keep]
        centres = boxes[:, :2] - np.array([ox, oy], np.float32)
        xyxy = np.concatenate([centres - boxes[:, 2:] / 2, centres + boxes[:, 2:] / 2], 1) / scale
        order = np.argsort(-scores, kind="stable")[:TOP_K]
        kept = _greedy(xyxy[order], NMS_IOU, inside_max=None, limit=len(order))
        return xyxy[order][kept].astype(np.float32), scores[order][kept]

    def _faces(
        self, rgb: np.ndarray, threshold: float, limit: int, min_side: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Both ranges on one image, each kept to its face sizes, in the SSD's framing, clipped to
        the image, best first: at most ``limit`` faces with both sides >= ``min_side``."""
        h, w = rgb.shape[:2]
        longer = float(max(rgb.shape[:2]))
        short, short_scores = self._run("short", rgb, threshold)
        if not len(short):
            # A face cut by the image's edges or filling all of it (tight portraits, a face
            # close to the webcam) is outside what the short-range model was trained on; seen
            # from further back it is found. ~1 ms, only for images without a large face.
            short, short_scores = self._run("short", rgb, threshold, zoom=ZOOM_OUT)
        big = short[:, 2] - short[:, 0] >= SHORT_MIN * longer
        short, short_scores = short[big], short_scores[big]
        long, long_scores = self._run("long", rgb, threshold)
        small = long[:, 2] - long[:, 0] < LONG_MAX * longer
        small &= _inside_share(long, short) < 0.3  # not a fragment of a short-range face
        parts = [
            (to_ssd_framing(short, FRAMING["short"]), short_scores),
            (to_ssd_framing(long[small], FRAMING["long"]), long_scores[small]),
        ]
        boxes = np.clip(np.concatenate([p[0] for p in parts]), 0, np.array([w, h, w, h], np.float32))
        scores = np.concatenate([p[1] for p in parts])
        big = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= min_side
        order = np.argsort(-scores[big], kind="stable")
        boxes, scores = boxes[big][order], scores[big][order]
        # Best first: a box overlapping a better one (NMS), or lying mostly inside it (a fragment:
        # an eye, a cheek, seen on close faces), is the same face.
        kept = _greedy(boxes, NMS_IOU, inside_max=0.5, limit=limit)
        return boxes[kept], scores[kept]

    @torch.inference_mode()
    def detect(
        self, images: list[torch.Tensor], min_confidence: float | None = None, max_faces: int | None = None
    ) -> list[Detections]:
        """Faces in each (3, H, W) uint8 RGB image, in its own pixels (see :class:`Detections`)."""
        threshold, limit = self.options.per_call(min_confidence, max_faces)
        min_side = max(self.options.min_face_size, 1e-6)
        out = []
        for img in images:
            rgb = np.ascontiguousarray(as_rgb(img).cpu().permute(1, 2, 0).numpy())
            boxes, scores = self._faces(rgb, threshold, limit, min_side)
            out.append(Detections(torch.from_numpy(boxes.copy()), torch.from_numpy(scores.copy())))
        return out


def to_ssd_framing(boxes: np.ndarray, framing: tuple[float, float, float, float]) -> np.ndarray:
    """BlazeFace boxes moved and resized to where the SSD puts the same face (see :data:`FRAMING`)."""
    dx, dy, fw, fh = framing
    side = boxes[:, 2] - boxes[:, 0]
    cx = (boxes[:, 0] + boxes[:, 2]) / 2 + dx * side
    cy = (boxes[:, 1] + boxes[:, 3]) / 2 + dy * side
    half_w, half_h = fw * side / 2, fh * side / 2
    return np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], 1).astype(np.float32)


def _areas(boxes: np.ndarray) -> np.ndarray:
    areas: np.ndarray = np.clip((boxes[:, 2:] - boxes[:, :2]).prod(-1), 1e-6, None)
    return areas


def _intersections(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """The intersection area of each box (rows) with each of ``others`` (columns), xyxy."""
    lo = np.maximum(boxes[:, None, :2], others[None, :, :2])
    hi = np.minimum(boxes[:, None, 2:], others[None, :, 2:])
    inter: np.ndarray = np.clip(hi - lo, 0, None).prod(-1)
    return inter


def _inside_share(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Per box, the largest share of its area that lies inside one of ``others`` (0 if none)."""
    if not len(boxes) or not len(others):
        return np.zeros(len(boxes), np.float32)
    share: np.ndarray = (_intersections(boxes, others) / _areas(boxes)[:, None]).max(1)
    return share


def _greedy(boxes: np.ndarray, iou_max: float, inside_max: float | None, limit: int) -> list[int]:
    """Greedy suppression over boxes sorted best first: the indices kept, at most ``limit``. A box
    goes when its IoU with a kept one exceeds ``iou_max`` or, with ``inside_max``, when more than
    that share of it lies inside a kept one. In numpy: torchvision's NMS costs ~0.3 ms a call in
    op overhead here, for a handful of boxes."""
    kept: list[int] = []
    for i in range(len(boxes)):
        if len(kept) >= limit:
            break
        if kept:
            better = boxes[kept]
            inter = _intersections(boxes[i : i + 1], better)[0]
            area = float(_areas(boxes[i : i + 1])[0])
            union = area + _areas(better) - inter
            if (inter / union).max() > iou_max:
                continue
            if inside_max is not None and inter.max() / area > inside_max:
                continue
        kept.append(i)
    return kept


def _resized(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """``rgb`` at ``width`` x ``height``: area-averaged when shrinking, halving first while it can
    (OpenCV's area resize has a fast path for exact halves; 640x480 -> 128x96 directly costs ~0.45
    ms, through 320x240 ~0.15 ms), bilinear when enlarging."""
    while rgb.shape[1] >= 2 * width and rgb.shape[0] >= 2 * height:
        rgb = cv2.resize(rgb, (rgb.shape[1] // 2, rgb.shape[0] // 2), interpolation=cv2.INTER_AREA)
    if (rgb.shape[1], rgb.shape[0]) == (width, height):
        return rgb
    shrink = width <= rgb.shape[1] and height <= rgb.shape[0]
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
