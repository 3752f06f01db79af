"""Streams: detect around the previous frame's faces, and the whole frame only every N frames.

Why: on the CPU the SSD over a whole 640x480 frame at its 300x300 input is most of a stream
frame's cost (docs/benchmarks.md, "Where the time goes (CPU)"). Between two webcam frames a
face moves a few pixels, so the next frame only needs the detector around where the faces were:
a square of ``CONTEXT`` times the face's side, run at ``ROI_INPUT`` (a tenth of the
pixels of the full input), all regions of all streams in one detector batch.

What that costs: a face that *enters* the frame is only looked for at the next whole-frame
detection, at most ``every`` frames later (:class:`RegionPlanner`); a face that is lost (fewer
faces than in the frame before) makes the next frame a whole-frame one at once, and so do faces
close enough together for one's region to reach the other.
REST requests always detect the whole image; this applies to streams only
(``EMOTION_STREAM_REDETECT_EVERY``, 0 or 1 = whole frame every time).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from server.pipeline.boxes import box_inside_share, box_iou, nms
from server.pipeline.types import Detections, FaceDetector

#: Detector input (width, height) for one region. A region is ``CONTEXT`` face sides wide, so the
#: face is ~38 px there, whatever its size in the frame: well inside what the SSD finds reliably
#: (a 48 px face in a 640-wide frame is ~23 px at its 300x300 input). Measured against 128x128
#: (docs/benchmarks.md, "Streams: region passes"): 3.5 vs 4.1 ms per region pass, and the same
#: share (97-100%) of faces 40-160 px wide kept by region passes.
ROI_INPUT = (96, 96)
#: Region side in units of the face box's longer side: room for the face to move between frames.
CONTEXT = 2.5
#: Overlap above which two faces found in overlapping regions are the same face (the SSD's own).
NMS_IOU = 0.45
#: With ``near`` boxes: the least overlap between a region's face and its box, and the most faces
#: one region is searched for (a region 2.5 face sides wide holds a few at most).
MATCH_IOU = 0.3
MAX_PER_REGION = 8


def search_regions(boxes: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """(K, 4) face boxes -> (K, 4) integer square regions ``CONTEXT`` times their side, around the
    same centres, moved inside the image where they fit (clipped where they do not)."""
    boxes = boxes.float().reshape(-1, 4)
    side = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).clamp(min=8.0) * CONTEXT
    cx = (boxes[:, 0] + boxes[:, 2]) * 0.5
    cy = (boxes[:, 1] + boxes[:, 3]) * 0.5
    x1 = (cx - side / 2).clamp(max=width - side).clamp(min=0.0)
    y1 = (cy - side / 2).clamp(max=height - side).clamp(min=0.0)
    x2 = (x1 + side).clamp(max=float(width))
    y2 = (y1 + side).clamp(max=float(height))
    return torch.stack([x1, y1, x2, y2], 1).round()


def reaches_another_face(regions: torch.Tensor, boxes: torch.Tensor) -> bool:
    """Whether any face's region overlaps another face's box: there, a region pass could find the
    neighbour instead of its own face (seen when one face walks past another), so the frame is
    detected whole, as it would be without region passes."""
    if len(boxes) < 2:
        return False
    lo = torch.maximum(regions[:, None, :2], boxes[None, :, :2])
    hi = torch.minimum(regions[:, None, 2:], boxes[None, :, 2:])
    overlap = (hi - lo).clamp(min=0).prod(-1) > 0
    overlap.fill_diagonal_(False)
    return bool(overlap.any())


class RegionDetector:
    """A detector run on regions of images instead of whole images (one batch for all regions).

    ``detector`` is a second SSD built at :data:`ROI_INPUT`; each region gives at most one face (its
    best); boxes come back in each image's pixels, duplicates from overlapping regions merged, best
    first, like ``FaceDetector.detect``.
    """

    def __init__(self, detector: FaceDetector) -> None:
        self.detector = detector
        #: Region passes and regions searched, for tests and /v1/info-style introspection.
        self.passes = 0
        self.regions = 0

    def detect(
        self,
        images: Sequence[torch.Tensor],
        regions: Sequence[torch.Tensor],
        min_confidence: float | None = None,
        max_faces: int | None = None,
        near: Sequence[torch.Tensor] | None = None,
    ) -> list[Detections]:
        """Faces in ``regions`` ((K, 4) per image, image pixels), one per region, in image pixels.

        A region's face is its best one; with ``near`` ((K, 4) per image, a box per region), the
        one overlapping that box most (IoU >= :data:`MATCH_IOU`, else none): a region that also
        holds a neighbour's face then still gives its own.
        """
        crops: list[torch.Tensor] = []
        owners: list[tuple[int, float, float]] = []
        for i, (img, regs) in enumerate(zip(images, regions, strict=True)):
            _, h, w = img.shape
            for x1, y1, x2, y2 in regs.reshape(-1, 4).round().int().tolist():
                x1, y1 = min(max(x1, 0), w - 1), min(max(y1, 0), h - 1)
                x2, y2 = min(max(x2, x1 + 1), w), min(max(y2, y1 + 1), h)
                crops.append(img[:, y1:y2, x1:x2])
                owners.append((i, float(x1), float(y1)))
        targets = None if near is None else torch.cat([b.reshape(-1, 4).float() for b in near])
        found = self.detector.detect(
            crops, min_confidence=min_confidence, max_faces=1 if targets is None else MAX_PER_REGION
        )
        self.passes += 1
        self.regions += len(crops)
        boxes: list[list[torch.Tensor]] = [[] for _ in images]
        scores: list[list[torch.Tensor]] = [[] for _ in images]
        for k, ((i, ox, oy), det) in enumerate(zip(owners, found, strict=True)):
            # One face per region: the region follows one face; anything else in it is either a
            # weak false detection (seen at scores ~0.5 beside a face at 0.99), a neighbour's face
            # (found in its own region) or a face the next whole-frame pass will find.
            # On the detector's device (a GPU's), as the proposals in ``near`` may not be.
            b = det.boxes.float() + det.boxes.new_tensor([ox, oy, ox, oy], dtype=torch.float32)
            pick = slice(0, 1)
            if targets is not None and len(b):
                overlap = box_iou(targets[k : k + 1].to(b.device), b)[0]
                best = int(overlap.argmax())
                pick = slice(best, best + 1) if float(overlap[best]) >= MATCH_IOU else slice(0, 0)
            boxes[i].append(b[pick])
            scores[i].append(det.scores[pick].float())
        out = []
        for b_list, s_list in zip(boxes, scores, strict=True):
            if not b_list:
                out.append(Detections(torch.zeros((0, 4)), torch.zeros(0)))
                continue
            out.append(_deduplicated(torch.cat(b_list), torch.cat(s_list), max_faces))
        return out


class ProposedRegions:
    """Whole-image detection in two steps: a fast detector proposes the faces, and the SSD around
    each proposal (the streams' region pass, :class:`RegionDetector`) confirms it and draws its box.

    Two proposers use it. The distilled SSD (``EMOTION_DETECTOR=distilled``, the default): a half-width
    SSD trained to reproduce the original's outputs over the whole image in ~1/2 of its time; alone it
    fires on some round textured things and misses a few faces, so it proposes at ``proposal_floor``
    (0.15: a recall stage). Proposals scoring >= ``trust_above`` (0.9) are kept in its own framing
    without a region pass; the doubtful rest, less those lying on a sure face, must be confirmed by the
    region pass (``keep_unconfirmed=False``) and are then framed by the original: docs/detection.md,
    "The distilled SSD".

    BlazeFace (``EMOTION_DETECTOR=blazeface``): on the CPU it proposes faces in ~5 ms where the SSD
    over the whole image takes
    ~9-11 ms, and finds more of the small ones; but the classifier was trained on crops of the
    SSD's boxes, and BlazeFace's boxes, even mapped to the SSD's framing, cost ~1.5 points on
    real photos (docs/benchmarks.md). The region pass gives the SSD's framing at a tenth of its
    pixels. A proposal it does not confirm keeps BlazeFace's box (in the SSD's framing): the
    region SSD misses some faces that BlazeFace finds (2-4% of 100-120 px faces in a 640x480
    frame, ``bench/smallest_face.py``), and dropping them cost recall without changing accuracy.
    """

    def __init__(
        self,
        proposer: FaceDetector,
        refiner: RegionDetector,
        proposal_floor: float | None = None,
        keep_unconfirmed: bool = True,
        trust_above: float | None = None,
    ) -> None:
        self.proposer = proposer
        self.refiner = refiner
        self.name = proposer.name
        self.proposal_floor = proposal_floor
        self.keep_unconfirmed = keep_unconfirmed
        self.trust_above = trust_above

    def detect(
        self,
        images: Sequence[torch.Tensor],
        min_confidence: float | None = None,
        max_faces: int | None = None,
    ) -> list[Detections]:
        propose_at = min_confidence
        if self.proposal_floor is not None:
            propose_at = min(self.proposal_floor, 1.0 if min_confidence is None else min_confidence)
        proposals = self.proposer.detect(list(images), propose_at, max_faces)
        trusted: list[Detections] | None = None
        if self.trust_above is not None:
            trusted, proposals = _split_trusted(proposals, max(self.trust_above, min_confidence or 0.0))
        out: list[Detections] = list(proposals)  # images without a proposal: no face
        at = [i for i, found in enumerate(proposals) if len(found)]
        if not at:
            return out if trusted is None else trusted
        regions = [search_regions(proposals[i].boxes, images[i].shape[2], images[i].shape[1]) for i in at]
        # Faces close together: each region may hold a neighbour too, so each keeps the face that
        # matches its own proposal (slower: the region SSD then runs its NMS).
        # With trusted faces, always: they are not searched again, so a region may reach one unseen here.
        crowded = trusted is not None or any(
            reaches_another_face(r, proposals[i].boxes) for i, r in zip(at, regions, strict=True)
        )
        near = [proposals[i].boxes for i in at] if crowded else None
        refined = self.refiner.detect([images[i] for i in at], regions, min_confidence, max_faces, near=near)
        if self.keep_unconfirmed:
            refined = [
                _with_unconfirmed(r, proposals[i], max_faces) for i, r in zip(at, refined, strict=True)
            ]
        out = _placed(out, at, refined)
        if trusted is None:
            return out
        return [_merged(t, o, max_faces) for t, o in zip(trusted, out, strict=True)]


def _with_unconfirmed(refined: Detections, proposals: Detections, max_faces: int | None) -> Detections:
    """``refined`` plus the proposals no refined box matches (IoU < :data:`MATCH_IOU`), best first."""
    if len(refined):
        alone = box_iou(proposals.boxes.float(), refined.boxes.float()).max(1).values < MATCH_IOU
    else:
        alone = torch.ones(len(proposals), dtype=torch.bool)
    if not bool(alone.any()):
        return refined
    boxes = torch.cat([refined.boxes.float(), proposals.boxes[alone].float()])
    scores = torch.cat([refined.scores.float(), proposals.scores[alone].float()])
    order = scores.argsort(descending=True, stable=True)[:max_faces]
    return Detections(boxes[order].contiguous(), scores[order].contiguous())


#: A doubtful proposal with at least this share of its box inside a trusted face's is a piece of
#: that face, not a face of its own, and is dropped without a region pass: in ``bench/vs_fer.py``'s
#: three-face frame two such proposals (0.2 and 0.23, 45% and 100% inside a face at 0.99) cost two of
#: its three region passes; 0.4 and 0.6 gave the same answers on the held-out photos.
INSIDE_TRUSTED = 0.4


def _split_trusted(proposals: list[Detections], trust: float) -> tuple[list[Detections], list[Detections]]:
    """Per image: the proposals scoring >= ``trust``, and the doubtful ones left to confirm (those
    lying on a trusted face dropped, :data:`INSIDE_TRUSTED`)."""
    trusted, doubtful = [], []
    for p in proposals:
        sure = p.scores >= trust
        left = ~sure
        if bool(sure.any()) and bool(left.any()):  # else nothing to check: the usual webcam frame
            left &= box_inside_share(p.boxes.float(), p.boxes[sure].float()).max(1).values < INSIDE_TRUSTED
        trusted.append(Detections(p.boxes[sure], p.scores[sure]))
        doubtful.append(Detections(p.boxes[left], p.scores[left]))
    return trusted, doubtful


def _merged(a: Detections, b: Detections, max_faces: int | None) -> Detections:
    """``a`` and ``b`` as one list, best first, a box overlapping a better one (IoU > NMS_IOU) dropped."""
    if not len(a) or not len(b):
        return a if len(a) else b
    boxes = torch.cat([a.boxes.float(), b.boxes.float()])
    return _deduplicated(boxes, torch.cat([a.scores.float(), b.scores.float()]), max_faces)


def _deduplicated(boxes: torch.Tensor, scores: torch.Tensor, max_faces: int | None) -> Detections:
    """What NMS keeps at :data:`NMS_IOU` (one face found twice), best first, at most ``max_faces``."""
    keep = nms(boxes, scores, NMS_IOU)[:max_faces]
    return Detections(boxes[keep].contiguous(), scores[keep].contiguous())


def _placed(out: list[Detections], at: list[int], found: list[Detections]) -> list[Detections]:
    for i, det in zip(at, found, strict=True):
        out[i] = det
    return out


class RegionPlanner:
    """Per stream: whether the next frame is detected whole or only around the last faces.

    Whole: the first frame, every ``every``-th frame after a whole one, after a frame with no
    face, after a frame with fewer faces than the one before it (a face lost), and while a face's
    region reaches another face.
    ``every`` <= 1: always whole.
    """

    def __init__(self, every: int) -> None:
        self.every = every
        self._boxes: torch.Tensor | None = None
        self._since_whole = 0  # region passes since the last whole-frame one

    def regions(self, width: int, height: int) -> torch.Tensor | None:
        """Regions to search in the next frame (its pixels), or None: detect the whole frame."""
        if self.every <= 1 or self._boxes is None or self._since_whole >= self.every - 1:
            return None
        regions = search_regions(self._boxes, width, height)
        if reaches_another_face(regions, self._boxes):
            return None  # faces close together (crossing, a group): each region would see two
        return regions

    def observe(self, boxes: Sequence[Sequence[float]], regions: torch.Tensor | None) -> None:
        """The faces found in the frame that was planned with ``regions``."""
        found = torch.tensor(list(boxes), dtype=torch.float32).reshape(-1, 4)
        if regions is None:
            self._since_whole = 0
        else:
            self._since_whole += 1
        # Fewer faces than the frame before, on a region pass or a whole one (a face the detector
        # missed once, e.g. while another passed in front): the next frame is searched whole.
        lost = len(found) < (0 if self._boxes is None else len(self._boxes))
        self._boxes = None if lost or not len(found) else found
