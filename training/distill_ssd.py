"""Distil the res10 SSD face detector into a thinner one (every channel count scaled by ``--width``).

Why: on a CPU the SSD's whole-image pass is most of a request (docs/benchmarks.md, "Versus fer"); a
half-width network does ~1/4 of the multiply-adds. Distillation, not training from box labels: the
teacher's outputs are dense (a face probability and box offsets for each of its ~9,000 priors), so any
image is a training example and the student keeps the teacher's priors, decoding and framing, which
the emotion classifier was fine-tuned on.

The student starts from the teacher's most used channels (:func:`thin_state`), or a wider student's
(``--init``). Frames are made on the
fly from photos of people (only those ``training.photo_crops`` keeps for training; a tenth of those
people validate) and, optionally, FER2013 training faces: whole photos as a REST upload sends them,
and 640x480 webcam-like scenes with faces pasted at 30-400 px on textured backgrounds, JPEG-compressed,
each squashed to the 300x300 input as the server does. Loss: soft binary cross-entropy of the face
probability (weighted towards priors either network thinks is a face, and more where they disagree
about the 0.5 threshold the server applies) plus smooth L1 of box offsets
weighted by the teacher's probability. Validation: the teacher's faces (score > 0.5 after NMS) the
student finds at IoU >= 0.5, its extra faces, and the matched boxes' IoU.

Resumable per epoch (``state.pt`` in ``--out``); the best epoch by validation F1 is ``best.safetensors``.

    nice -n 19 python -m training.distill_ssd --data ../shared/data/realfaces-dev \\
        --fer ../shared/data/fer2013.tar.gz --out runs/ssd-half
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from server.pipeline.boxes import box_iou
from server.pipeline.detect import SSDFaceDetector, build_detector
from server.pipeline.detect.network import BlobInput, Res10SSD
from server.pipeline.detect.nms import select_detections
from server.pipeline.detect.priors import decode_boxes
from server.pipeline.detect.ssd import BGR_MEAN
from server.pipeline.detect.weights import read_distilled
from training.photo_crops import is_heldout, person_of

#: Channel groups of :class:`Res10SSD` as (parameter, dimension) pairs: every place one set of channels
#: appears, so thinning keeps the same channels everywhere (residual sums and heads included).
GROUPS: dict[str, list[tuple[str, int]]] = {
    "s32": [
        ("conv1.weight", 0),
        ("conv1.bias", 0),
        ("block64.conv1.weight", 1),
        ("block64.conv2.weight", 0),
        ("block64.conv2.bias", 0),
        ("block128.pre.weight", 0),
        ("block128.pre.bias", 0),
        ("block128.conv1.weight", 1),
        ("block128.expand.weight", 1),
    ],
    "m64": [("block64.conv1.weight", 0), ("block64.conv1.bias", 0), ("block64.conv2.weight", 1)],
    "m128": [("block128.conv1.weight", 0), ("block128.conv1.bias", 0), ("block128.conv2.weight", 1)],
    "s128": [
        ("block128.conv2.weight", 0),
        ("block128.conv2.bias", 0),
        ("block128.expand.weight", 0),
        ("block128.expand.bias", 0),
        ("block256.pre.weight", 0),
        ("block256.pre.bias", 0),
        ("block256.conv1.weight", 1),
        ("block256.expand.weight", 1),
        ("norm_scale", 0),
        ("loc.0.weight", 1),
        ("conf.0.weight", 1),
    ],
    "m256": [("block256.conv1.weight", 0), ("block256.conv1.bias", 0), ("block256.conv2.weight", 1)],
    "s256": [
        ("block256.conv2.weight", 0),
        ("block256.conv2.bias", 0),
        ("block256.expand.weight", 0),
        ("block256.expand.bias", 0),
        ("block512.pre.weight", 0),
        ("block512.pre.bias", 0),
        ("block512.conv1.weight", 1),
        ("block512.expand.weight", 1),
    ],
    "m512": [("block512.conv1.weight", 0), ("block512.conv1.bias", 0), ("block512.conv2.weight", 1)],
    "s512": [
        ("block512.conv2.weight", 0),
        ("block512.conv2.bias", 0),
        ("block512.expand.weight", 0),
        ("block512.expand.bias", 0),
        ("last_affine.weight", 0),
        ("last_affine.bias", 0),
        ("extra.conv6_1.weight", 1),
        ("loc.1.weight", 1),
        ("conf.1.weight", 1),
    ],
}
# The extra layers: each x_1 feeds its x_2; each x_2 feeds the next x_1 and its own heads.
_TAIL = [(6, 2), (7, 3), (8, 4), (9, 5)]
for _i, _head in _TAIL:
    GROUPS[f"e{_i}1"] = [
        (f"extra.conv{_i}_1.weight", 0),
        (f"extra.conv{_i}_1.bias", 0),
        (f"extra.conv{_i}_2.weight", 1),
    ]
    GROUPS[f"e{_i}2"] = [
        (f"extra.conv{_i}_2.weight", 0),
        (f"extra.conv{_i}_2.bias", 0),
        (f"loc.{_head}.weight", 1),
        (f"conf.{_head}.weight", 1),
        *([(f"extra.conv{_i + 1}_1.weight", 1)] if _i < 9 else []),
    ]


def thin_state(teacher: dict[str, torch.Tensor], student: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The teacher's weights cut to the student's shapes, keeping in each group the channels whose
    consumers' weights are largest (L2 over every input slice that reads them)."""
    out = dict(teacher)
    for group in GROUPS.values():
        size = next(student[name].shape[dim] for name, dim in group)
        usage = sum(
            teacher[name].transpose(0, 1).flatten(1).square().sum(1) for name, dim in group if dim == 1
        )
        keep = torch.as_tensor(usage).argsort(descending=True)[:size].sort().values
        for name, dim in group:
            out[name] = out[name].index_select(dim, keep)
    wrong = [k for k, v in out.items() if v.shape != student[k].shape]
    if wrong:
        raise ValueError(f"GROUPS does not cover {wrong}")
    return {k: v.contiguous() for k, v in out.items()}


class FrameMaker:
    """Random detector inputs (300x300 RGB uint8, as ``SSDFaceDetector.preprocess`` makes them)."""

    def __init__(
        self, photos: list[Path], fer_faces: np.ndarray | None, size: tuple[int, int], seed: int
    ) -> None:
        self.photos = [img for img in (cv2.imread(str(p)) for p in photos) if img is not None]
        self.fer = fer_faces
        self.size = size
        self.rng = np.random.default_rng(seed)

    def _photo(self) -> np.ndarray:
        return self.photos[self.rng.integers(len(self.photos))]

    def _face_patch(self, width: int) -> np.ndarray:
        """A photo (or FER face) scaled to ``width`` pixels wide, sometimes mirrored."""
        if self.fer is not None and self.rng.random() < 0.3:
            gray = self.fer[self.rng.integers(len(self.fer))]
            img = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
        else:
            img = self._photo()
        h = max(8, round(img.shape[0] * width / img.shape[1]))
        img = cv2.resize(
            img, (width, h), interpolation=cv2.INTER_AREA if width < img.shape[1] else cv2.INTER_LINEAR
        )
        return img[:, ::-1] if self.rng.random() < 0.5 else img

    def _background(self, h: int, w: int) -> np.ndarray:
        """Something that is not a face (the teacher says where it finds one anyway): blurred photo
        texture, noise, a gradient, and the clutter a network may mistake for faces (round shapes,
        text, photos cut into shuffled tiles)."""
        kind = self.rng.integers(6)
        if kind == 0:  # a photo's corner, blown up and blurred: natural texture without a sharp face
            src = self._photo()
            y, x = self.rng.integers(0, src.shape[0] // 2), self.rng.integers(0, src.shape[1] // 2)
            patch = src[y : y + src.shape[0] // 3, x : x + src.shape[1] // 3]
            return cv2.GaussianBlur(cv2.resize(patch, (w, h)), (0, 0), float(self.rng.uniform(1, 6)))
        if kind == 1:
            noise = self.rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
            return cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)
        if kind == 2:
            color = self.rng.integers(0, 256, 3)
            ramp = np.linspace(self.rng.uniform(0.5, 1.0), self.rng.uniform(0.5, 1.0), w)[None, :, None]
            return np.clip(color * ramp * np.ones((h, 1, 1)), 0, 255).astype(np.uint8)
        if kind == 3:
            return self._shapes(h, w)
        if kind == 4:
            return self._text(self._shapes(h, w) if self.rng.random() < 0.5 else self._background(h, w))
        return self._shuffled(h, w)

    def _shapes(self, h: int, w: int) -> np.ndarray:
        """ "Dead leaves": overlapping discs, ellipses and boxes of many sizes, flat-coloured or cut from
        photos (round textured things, coins, clocks, are what a thin detector mistakes for faces)."""
        img = np.full((h, w, 3), self.rng.integers(0, 256, 3), np.uint8)
        textured = self.rng.random() < 0.5
        for _ in range(int(self.rng.integers(20, 120 if textured else 300))):
            r = int(np.exp(self.rng.uniform(np.log(3), np.log(min(h, w) / 3))))
            c = (int(self.rng.integers(0, w)), int(self.rng.integers(0, h)))
            layer = np.zeros((h, w), np.uint8) if textured else img
            color = 255 if textured else tuple(int(v) for v in self.rng.integers(0, 256, 3))
            shape = self.rng.integers(3)
            if shape == 0:
                cv2.circle(layer, c, r, color, -1, cv2.LINE_AA)
            elif shape == 1:
                axes = (r, max(1, int(r * self.rng.uniform(0.3, 1.0))))
                cv2.ellipse(layer, c, axes, float(self.rng.uniform(0, 180)), 0, 360, color, -1, cv2.LINE_AA)
            else:
                cv2.rectangle(layer, c, (c[0] + r, c[1] + int(r * self.rng.uniform(0.3, 2))), color, -1)
            if textured:
                x0, y0, x1, y1 = (
                    max(c[0] - 2 * r, 0),
                    max(c[1] - 2 * r, 0),
                    min(c[0] + 2 * r, w),
                    min(c[1] + 2 * r, h),
                )
                if x1 <= x0 or y1 <= y0:
                    continue
                src = self._photo()
                sy, sx = self.rng.integers(0, src.shape[0] // 2), self.rng.integers(0, src.shape[1] // 2)
                patch = src[sy : sy + src.shape[0] // 2, sx : sx + src.shape[1] // 2]
                if self.rng.random() < 0.5:
                    patch = np.rot90(patch, int(self.rng.integers(1, 4)))
                patch = cv2.resize(np.ascontiguousarray(patch), (x1 - x0, y1 - y0))
                alpha = layer[y0:y1, x0:x1, None].astype(np.float32) / 255
                img[y0:y1, x0:x1] = (alpha * patch + (1 - alpha) * img[y0:y1, x0:x1]).astype(np.uint8)
        return cv2.GaussianBlur(img, (0, 0), float(self.rng.uniform(0.5, 2.0)))

    def _text(self, img: np.ndarray) -> np.ndarray:
        img = img.copy()
        for _ in range(int(self.rng.integers(3, 20))):
            text = "".join(chr(int(c)) for c in self.rng.integers(33, 127, int(self.rng.integers(2, 12))))
            org = (int(self.rng.integers(0, img.shape[1])), int(self.rng.integers(0, img.shape[0])))
            color = tuple(int(v) for v in self.rng.integers(0, 256, 3))
            font, scale = int(self.rng.integers(0, 8)), float(self.rng.uniform(0.5, 5))
            cv2.putText(img, text, org, font, scale, color, int(self.rng.integers(1, 8)), cv2.LINE_AA)
        return img

    def _shuffled(self, h: int, w: int) -> np.ndarray:
        """A photo cut into tiles, shuffled and turned: skin, hair and eyes without a face's layout."""
        k = int(self.rng.integers(3, 9))
        src = cv2.resize(self._photo(), (w // k * k, h // k * k))
        th, tw = src.shape[0] // k, src.shape[1] // k
        tiles = [src[i * th : (i + 1) * th, j * tw : (j + 1) * tw] for i in range(k) for j in range(k)]
        order = self.rng.permutation(len(tiles))
        tiles = [np.rot90(tiles[o], 2) if self.rng.random() < 0.5 else tiles[o] for o in order]
        rows = [np.concatenate(tiles[i * k : (i + 1) * k], 1) for i in range(k)]
        return cv2.resize(np.concatenate(rows, 0), (w, h))

    def _scene(self) -> np.ndarray:
        h, w = 480, 640
        frame = self._background(h, w)
        for _ in range(self.rng.choice([0, 1, 1, 2, 3, 4])):
            pw = int(min(np.exp(self.rng.uniform(np.log(40), np.log(500))), w))
            patch = self._face_patch(pw)[:h]
            ph = patch.shape[0]
            y, x = self.rng.integers(0, h - ph + 1), self.rng.integers(0, w - pw + 1)
            if self.rng.random() < 0.6:  # blended in through a soft oval: no rectangle edge to rely on
                oval = np.zeros((ph, pw), np.float32)
                cv2.ellipse(oval, (pw // 2, ph // 2), (pw // 2, ph // 2), 0, 0, 360, 1.0, -1)
                alpha = cv2.GaussianBlur(oval, (0, 0), max(1.0, pw / 12))[..., None]
                region = frame[y : y + ph, x : x + pw]
                frame[y : y + ph, x : x + pw] = (alpha * patch + (1 - alpha) * region).astype(np.uint8)
            else:
                frame[y : y + ph, x : x + pw] = patch
        return frame

    def _whole(self) -> np.ndarray:
        img = self._photo()
        ih, iw = img.shape[:2]
        s = self.rng.uniform(0.75, 1.0)
        ch, cw = int(ih * s * self.rng.uniform(0.85, 1.15)), int(iw * s)
        ch = min(ch, ih)
        y, x = self.rng.integers(0, ih - ch + 1), self.rng.integers(0, iw - cw + 1)
        img = img[y : y + ch, x : x + cw]
        if self.rng.random() < 0.5:  # zoomed out: the photo inside a larger frame
            pad = int(max(ch, cw) * self.rng.uniform(0.1, 0.8))
            img = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REFLECT)
        return img[:, ::-1] if self.rng.random() < 0.5 else img

    def frame(self) -> np.ndarray:
        u = self.rng.random()
        img = self._whole() if u < 0.3 else self._background(480, 640) if u < 0.45 else self._scene()
        img = np.ascontiguousarray(img).astype(np.float32)
        img = img * self.rng.uniform(0.6, 1.4) + self.rng.uniform(-40, 40)
        if self.rng.random() < 0.25:
            img = img.mean(-1, keepdims=True).repeat(3, -1)
        bgr = np.clip(img, 0, 255).astype(np.uint8)
        if self.rng.random() < 0.7:  # the server sees JPEGs
            _, enc = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(self.rng.integers(30, 95))])
            bgr = cv2.imdecode(enc, cv2.IMREAD_COLOR)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return cv2.resize(rgb, self.size, interpolation=cv2.INTER_LINEAR)

    def batch(self, n: int) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.frame() for _ in range(n)]))


def distill_loss(student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...]) -> torch.Tensor:
    s_loc, s_logits = student[0], student[1]
    t_loc, t_logits = teacher[0], teacher[1]
    s = s_logits[..., 1] - s_logits[..., 0]
    t = torch.sigmoid(t_logits[..., 1] - t_logits[..., 0])
    p = torch.sigmoid(s).detach()
    # Priors either network calls a face matter most, and most of all where they disagree about it:
    # the server keeps boxes scoring over 0.5, so a prior on the wrong side of 0.5 is a face lost or made.
    weight = 1.0 + 10.0 * torch.maximum(t, p) + 20.0 * ((p > 0.5) != (t > 0.5)).float()
    conf = (weight * F.binary_cross_entropy_with_logits(s, t, reduction="none")).mean()
    loc = (t[..., None] * F.smooth_l1_loss(s_loc, t_loc, beta=0.1, reduction="none")).sum() / (t.sum() + 1.0)
    return conf + loc


@dataclass
class FaceMatch:
    """A reference detector's faces against another's, image by image: the reference's faces the other
    finds (IoU >= 0.5), the faces it adds, and the matched boxes' IoUs."""

    faces: int = 0
    found: int = 0
    extra: int = 0
    ious: list[float] = field(default_factory=list)

    def add(self, want: torch.Tensor, got: torch.Tensor) -> None:
        """One image's (K, 4) boxes of the reference (``want``) and of the other detector (``got``)."""
        self.faces += len(want)
        if not len(want) or not len(got):
            self.extra += len(got)
            return
        iou = box_iou(want, got)
        best = iou.max(1).values
        self.found += int((best >= 0.5).sum())
        self.ious += best[best >= 0.5].tolist()
        self.extra += int((iou.max(0).values < 0.5).sum())

    @property
    def recall(self) -> float:
        return self.found / max(self.faces, 1)

    def median_iou(self) -> float:
        return float(np.median(self.ious)) if self.ious else 0.0


@torch.inference_mode()
def validate(
    student: torch.nn.Module, teacher: torch.nn.Module, det: SSDFaceDetector, frames: torch.Tensor
) -> dict[str, float]:
    """The teacher's faces the student finds (IoU >= 0.5), the student's extra faces, matched IoU."""
    match = FaceMatch()
    for chunk in frames.split(32):
        outs = []
        for net in (teacher, student):
            loc, logits, sizes = net(chunk)
            priors, var = det.prior_boxes(sizes)
            boxes = decode_boxes(loc, priors, var)
            scores = torch.sigmoid(logits[..., 1] - logits[..., 0])
            keep = select_detections(boxes, scores, 0.5, det.output_spec)
            outs.append([boxes[i, k] for i, k in enumerate(keep)])
        for t_boxes, s_boxes in zip(*outs, strict=True):
            match.add(t_boxes, s_boxes)
    precision = match.found / max(match.found + match.extra, 1)
    return {
        "teacher_faces": match.faces,
        "recall": match.recall,
        "extra": match.extra,
        "f1": 2 * match.recall * precision / max(match.recall + precision, 1e-9),
        "median_iou": match.median_iou(),
    }


def split_photos(data: Path, heldout_fraction: float, salt: str) -> tuple[list[Path], list[Path]]:
    """(train, validation) photos of the people ``training.photo_crops`` keeps for training."""
    files = sorted(p for p in data.glob("*/*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    people = [p for p in files if not is_heldout(person_of(p), heldout_fraction, salt)]
    val = [p for p in people if is_heldout(person_of(p), 0.1, "distill-val")]
    if not val and people:  # a small folder: one person validates
        val = [p for p in people if person_of(p) == person_of(people[0])]
    chosen = set(val)
    return [p for p in people if p not in chosen], val


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="photos as <class>/<photo>.jpg")
    p.add_argument("--fer", type=Path, default=None, help="FER2013 (any training.data form): faces to paste")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument(
        "--init",
        type=Path,
        default=None,
        help="start from a wider distilled student's .safetensors (cut to --width) instead of the teacher",
    )
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--steps", type=int, default=200, help="steps per epoch")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--val-frames", type=int, default=384)
    p.add_argument("--heldout-fraction", type=float, default=0.5, help="as training.photo_crops")
    p.add_argument("--salt", default="", help="as training.photo_crops")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    det = build_detector("ssd")
    assert isinstance(det, SSDFaceDetector)
    teacher = det.model.to(memory_format=torch.channels_last)
    anchors = tuple(len(s.box_sizes) for s in det.prior_specs)
    student = BlobInput(Res10SSD(anchors, width=args.width), BGR_MEAN)
    initial = teacher.net.state_dict()
    if args.init is not None:
        wider, _, _ = read_distilled(args.init)
        initial = {k: v.float() for k, v in wider.items()}
    student.net.load_state_dict(thin_state(initial, student.net.state_dict()))
    student = student.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=1e-4)
    total = args.epochs * args.steps
    warm = min(200, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda i: (i + 1) / warm if i < warm else 0.5 * (1 + math.cos(math.pi * (i - warm) / (total - warm))),
    )

    train_photos, val_photos = split_photos(args.data, args.heldout_fraction, args.salt)
    fer = None
    if args.fer is not None:
        from training.data import load_dataset

        ds = load_dataset(args.fer).subset("train")
        fer = ds.images
    size = det.input_size
    val_frames = FrameMaker(val_photos, None, size, seed=12345).batch(args.val_frames)
    maker = FrameMaker(train_photos, fer, size, seed=0)

    state_path, log_path = args.out / "state.pt", args.out / "log.jsonl"
    start, best = 0, -1.0
    if state_path.is_file():
        state = torch.load(state_path, weights_only=False)
        student.load_state_dict(state["student"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        maker.rng = state["rng"]
        start, best = state["epoch"], state["best"]
        print(f"resumed after epoch {start}, best f1 {best:.4f}", flush=True)
    else:
        print(json.dumps({"epoch": 0, **validate(student, teacher, det, val_frames)}), flush=True)
    faces = 0 if fer is None else len(fer)
    print(f"{len(train_photos)} training photos, {len(val_photos)} validation; FER2013 faces: {faces}")

    for epoch in range(start + 1, args.epochs + 1):
        t0, losses = time.time(), []
        student.train()
        for _ in range(args.steps):
            x = maker.batch(args.batch)
            with torch.no_grad():  # not inference_mode: its tensors cannot enter the loss's graph
                target = teacher(x)
            loss = distill_loss(student(x), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        student.eval()
        row: dict[str, float] = {
            "epoch": epoch,
            "loss": float(np.mean(losses)),
            "lr": float(sched.get_last_lr()[0]),
            "minutes": (time.time() - t0) / 60,
            **validate(student, teacher, det, val_frames),
        }
        if row["f1"] > best:
            best = row["f1"]
            weights = {k: v.detach().contiguous() for k, v in student.net.state_dict().items()}
            save_file(
                weights,
                str(args.out / "best.safetensors"),
                metadata={
                    "width": str(args.width),
                    "layout": "trained",  # build_detector's SSD, the teacher
                    "epoch": str(epoch),
                    "f1": f"{best:.4f}",
                    "teacher": "res10_300x300_ssd_iter_140000.caffemodel",
                },
            )
        with log_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
        torch.save(
            {
                "student": student.state_dict(),
                "opt": opt.state_dict(),
                "sched": sched.state_dict(),
                "rng": maker.rng,
                "epoch": epoch,
                "best": best,
            },
            state_path.with_suffix(".tmp"),
        )
        state_path.with_suffix(".tmp").replace(state_path)


if __name__ == "__main__":
    main()
