"""One face in, one face out: frames built from the test photos where the res10 SSD's
deploy head layout reports phantom faces (docs/detection.md, "Phantom faces")."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from server.pipeline.detect import Detections, DetectorOptions, SSDFaceDetector, locate_weights

# The astronaut's head in skimage's 512x512 photo, with some hair and collar (checked by eye).
HEAD = (150, 10, 310, 230)  # x1, y1, x2, y2


def chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).contiguous()


def paste(
    canvas_wh: tuple[int, int], face: np.ndarray, side: int, x: int, y: int, grey: int = 128
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """``face`` scaled to height ``side`` and pasted with its top-left at (x, y), possibly partly
    outside; returns the frame and the visible part of the pasted face (x1, y1, x2, y2)."""
    w, h = canvas_wh
    f = cv2.resize(face, (round(side * face.shape[1] / face.shape[0]), side), interpolation=cv2.INTER_AREA)
    out = np.full((h, w, 3), grey, np.uint8)
    x1, y1, x2, y2 = max(x, 0), max(y, 0), min(x + f.shape[1], w), min(y + f.shape[0], h)
    out[y1:y2, x1:x2] = f[y1 - y : y2 - y, x1 - x : x2 - x]
    return out, (x1, y1, x2, y2)


def frames(astronaut: np.ndarray) -> dict[str, tuple[np.ndarray, tuple[int, int, int, int]]]:
    """Named frames with one face each, and the region that face occupies."""
    x1, y1, x2, y2 = HEAD
    head = astronaut[y1:y2, x1:x2]
    tight = astronaut[40:200, 165:295]  # brow to chin: the face fills the frame
    out: dict[str, tuple[np.ndarray, tuple[int, int, int, int]]] = {}
    # Pasted at several sizes and places on a 4:3 frame (the case: 400 px at 120, 40).
    for side, x, y in [(400, 120, 40), (300, 20, 20), (300, 330, 170), (200, 220, 140), (150, 480, 300)]:
        out[f"canvas {side}px at {x},{y}"] = paste((640, 480), head, side, x, y)
    # Faces filling square and 4:3 frames, like the realfaces-dev photos.
    for wh in [(350, 350), (250, 250), (640, 480), (480, 640)]:
        f = cv2.resize(tight, wh, interpolation=cv2.INTER_AREA)
        out[f"tight face filling {wh[0]}x{wh[1]}"] = (f, (0, 0, wh[0], wh[1]))
    out["astronaut head 350x350"] = (
        cv2.resize(head, (350, 350), interpolation=cv2.INTER_AREA),
        (0, 0, 350, 350),
    )
    # Cut by each border of the frame.
    for name, (x, y) in {
        "left": (-90, 100),
        "top": (200, -110),
        "right": (470, 80),
        "bottom": (240, 300),
    }.items():
        out[f"cut by the {name} border"] = paste((640, 480), head, 300, x, y)
    return out


@pytest.fixture(scope="module")
def detectors() -> dict[str, SSDFaceDetector]:
    files = locate_weights()
    return {layout: SSDFaceDetector(files, layout=layout) for layout in ("trained", "deploy")}


def problem(det: Detections, region: tuple[int, int, int, int]) -> str | None:
    """Why ``det`` is not exactly the one face in ``region`` (None if it is)."""
    if len(det) != 1:
        return f"{len(det)} faces: {det.boxes.round().tolist()} {det.scores.tolist()}"
    x1, y1, x2, y2 = region
    bx1, by1, bx2, by2 = det.boxes[0].tolist()
    cx, cy = (bx1 + bx2) / 2, (by1 + by2) / 2
    # Centred in the face and mostly made of it, not a box next to it.
    inter = max(0.0, min(bx2, x2) - max(bx1, x1)) * max(0.0, min(by2, y2) - max(by1, y1))
    if not (x1 <= cx <= x2 and y1 <= cy <= y2) or inter < 0.5 * (bx2 - bx1) * (by2 - by1):
        return f"misplaced: {det.boxes.round().tolist()} for a face at {region}"
    # A face filling the frame gets a box of most of it (the deploy layout's is a lower-right corner).
    if (x2 - x1) * (y2 - y1) == 0 or inter < 0.3 * (x2 - x1) * (y2 - y1):
        return f"too small: {det.boxes.round().tolist()} for a face at {region}"
    return None


def test_exactly_one_face_where_there_is_one(
    detectors: dict[str, SSDFaceDetector], astronaut: np.ndarray
) -> None:
    cases = frames(astronaut)
    got = detectors["trained"].detect([chw(img) for img, _ in cases.values()])
    problems = {
        name: why
        for (name, (_, region)), det in zip(cases.items(), got, strict=True)
        if (why := problem(det, region))
    }
    assert not problems


def test_the_frames_catch_the_deploy_layouts_phantoms(
    detectors: dict[str, SSDFaceDetector], astronaut: np.ndarray
) -> None:
    """The same frames through the prototxt's padding go wrong (extra or misplaced boxes) on
    many of them, so the test above would fail without the fix."""
    cases = frames(astronaut)
    got = detectors["deploy"].detect([chw(img) for img, _ in cases.values()])
    wrong = [
        name for (name, (_, region)), det in zip(cases.items(), got, strict=True) if problem(det, region)
    ]
    assert len(wrong) >= 4, wrong
    assert all(name in wrong for name in cases if name.startswith("tight face")), wrong


def test_no_face_frames_stay_empty_with_a_face_next_to_them(
    detectors: dict[str, SSDFaceDetector], astronaut: np.ndarray
) -> None:
    """A batch mixing empty frames and faces: the empty ones stay empty (no cross-talk)."""
    grey = np.full((480, 640, 3), 128, np.uint8)
    face, _ = paste((640, 480), astronaut[HEAD[1] : HEAD[3], HEAD[0] : HEAD[2]], 400, 120, 40)
    got = detectors["trained"].detect([chw(grey), chw(face), chw(grey[:300, :300])])
    assert [len(d) for d in got] == [0, 1, 0]


@pytest.mark.parametrize("size", [(300, 300), (400, 400), (160, 120)])
def test_trained_layout_is_the_inner_cells_of_the_deploy_maps(
    astronaut: np.ndarray, size: tuple[int, int]
) -> None:
    """Same weights, no retraining: the first four heads are unchanged, and the unpadded conv8_2
    computes exactly the deploy net's inner conv8_2 cells (the heads then see those, zero-padded)."""
    trained, deploy = (
        SSDFaceDetector(locate_weights(), DetectorOptions(input_size=size), layout=layout)
        for layout in ("trained", "deploy")
    )
    blob = trained.preprocess([chw(astronaut)])
    maps: dict[str, torch.Tensor] = {}
    outputs = {}
    for name, det in (("trained", trained), ("deploy", deploy)):
        hook = det.model.net.extra["conv8_2"].register_forward_hook(
            lambda _m, _i, out, name=name: maps.__setitem__(name, out)
        )
        with torch.inference_mode():
            outputs[name] = det.model(blob)
        hook.remove()
    (loc_t, conf_t, sizes_t), (loc_d, conf_d, sizes_d) = outputs["trained"], outputs["deploy"]
    assert sizes_t[:4] == sizes_d[:4]
    n = sum(h * w * len(s.box_sizes) for (h, w), s in zip(sizes_t[:4], trained.prior_specs, strict=False))
    assert torch.equal(conf_t[:, :n], conf_d[:, :n]) and torch.equal(loc_t[:, :n], loc_d[:, :n])
    hd, wd = sizes_d[4]
    assert sizes_t[4] == ((hd - 2, wd - 2) if min(hd, wd) >= 3 else (0, 0))
    if "trained" in maps:  # not run at all where the map would be empty (160x120)
        assert torch.allclose(maps["trained"], maps["deploy"][..., 1:-1, 1:-1], atol=1e-4)
    else:
        assert min(hd, wd) < 3 and loc_t.shape[1] == n
