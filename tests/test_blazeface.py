"""BlazeFace (the CPU's default detector): the faces it finds against the SSD's, on real photos,
at the sizes the service promises (a 40-48 px face in a 640x480 frame, a face filling the image)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from dataset_paths import REALFACES
from server_harness import chw
from torchvision.ops import box_iou

from server.pipeline.backend import openvino_available
from server.pipeline.detect import (
    BlazeFaceDetector,
    DetectorOptions,
    SSDFaceDetector,
    build_detector,
    resolve_detector,
)
from server.pipeline.detect.blazeface import FRAMING, anchor_centres, to_ssd_framing

pytestmark = pytest.mark.skipif(not openvino_available(), reason="blazeface runs on OpenVINO")


@pytest.fixture(scope="module")
def blaze() -> BlazeFaceDetector:
    return BlazeFaceDetector(DetectorOptions(min_face_size=1))


@pytest.fixture(scope="module")
def ssd() -> SSDFaceDetector:
    det = build_detector("ssd", DetectorOptions(min_face_size=1))
    assert isinstance(det, SSDFaceDetector)
    return det


def photos(astronaut: np.ndarray, n: int = 24) -> list[np.ndarray]:
    """Real photos with one face: realfaces-dev when present, else the astronaut and her mirror."""
    if not REALFACES.is_dir():
        return [astronaut, np.ascontiguousarray(astronaut[:, ::-1])]
    files = sorted(REALFACES.glob("*/*.jpg"))
    pick = np.random.default_rng(3).choice(len(files), n, replace=False)
    return [cv2.cvtColor(cv2.imread(str(files[i])), cv2.COLOR_BGR2RGB) for i in pick]


def paste(
    photo: np.ndarray, box: np.ndarray, width: int, at: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """``photo`` scaled so its face ``box`` is ``width`` px wide, on a 640x480 textured frame."""
    rng = np.random.default_rng(width)
    frame = cv2.GaussianBlur(rng.integers(60, 200, (480, 640, 3), dtype=np.uint8), (0, 0), 3)
    s = width / (box[2] - box[0])
    small = cv2.resize(photo, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    # at most 400x400 of it: the top left, or from a little above and left of the face where the face
    # would reach past that (the astronaut scaled to a 200 px face did: a test without the dataset
    # then looked for a face that was not in the frame)
    x1, y1, x2, y2 = box * s
    cx, cy = (0 if hi <= 380 else max(0, int(lo) - 60) for lo, hi in ((x1, x2), (y1, y2)))
    small = small[cy : cy + 400, cx : cx + 400]
    x, y = at
    frame[y : y + small.shape[0], x : x + small.shape[1]] = small[: 480 - y, : 640 - x]
    return frame, box * s + np.array([x - cx, y - cy, x - cx, y - cy], np.float32)


def test_finds_the_ssd_faces_in_real_photos(
    blaze: BlazeFaceDetector, ssd: SSDFaceDetector, astronaut: np.ndarray
) -> None:
    """One face per photo where the SSD finds one, in the SSD's framing (what the classifier expects)."""
    pairs = 0
    for photo in photos(astronaut):
        ref = ssd.detect([chw(photo)])[0]
        if len(ref) != 1:
            continue
        got = blaze.detect([chw(photo)])[0]
        assert len(got) == 1, f"{len(got)} faces in a one-face photo"
        assert float(box_iou(got.boxes, ref.boxes)[0, 0]) > 0.6
        pairs += 1
    assert pairs >= 2


@pytest.mark.parametrize("width", [48, 64, 120, 200])
def test_small_and_webcam_sized_faces_in_a_640x480_frame(
    blaze: BlazeFaceDetector, ssd: SSDFaceDetector, astronaut: np.ndarray, width: int
) -> None:
    """Faces from 48 px (the small faces the service must find) to a webcam's ~200 px, one box each."""
    found = tried = 0
    for k, photo in enumerate(photos(astronaut, 12)):
        ref = ssd.detect([chw(photo)])[0]
        if len(ref) != 1:
            continue
        frame, box = paste(photo, ref.boxes[0].numpy(), width, (40 + 37 * k % 200, 30 + 23 * k % 60))
        got = blaze.detect([chw(frame)])[0]
        tried += 1
        hit = len(got) and float(box_iou(got.boxes, torch.from_numpy(box)[None]).max()) >= 0.4
        found += int(bool(hit))
        assert len(got) <= 1, f"{len(got)} boxes for one {width} px face"
    assert tried >= 2 and found >= 0.75 * tried, f"{found}/{tried} faces of {width} px found"


def test_face_filling_the_image_is_found(blaze: BlazeFaceDetector, astronaut: np.ndarray) -> None:
    """A face cut by the image's edges (too close for the short-range model) is found on a second look
    from further back."""
    x1, y1, x2, y2 = 170, 20, 290, 200  # the astronaut's face
    tight = np.ascontiguousarray(astronaut[y1 + 15 : y2 - 15, x1 + 5 : x2 - 5])
    got = blaze.detect([chw(tight)])[0]
    assert len(got) == 1
    w = float(got.boxes[0, 2] - got.boxes[0, 0])
    assert w > 0.6 * tight.shape[1]


def test_no_face_grey_tiny_and_options(blaze: BlazeFaceDetector, astronaut: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    noise = cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), (0, 0), 4)
    assert len(blaze.detect([chw(noise)])[0]) == 0
    grey = chw(cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)[..., None])
    assert grey.shape[0] == 1 and len(blaze.detect([grey])[0]) == 1
    out = blaze.detect([torch.zeros((3, 3, 5), dtype=torch.uint8)], min_confidence=0.0, max_faces=2)[0]
    assert len(out) <= 2 and out.boxes.dtype == torch.float32
    every = blaze.detect([chw(noise)], min_confidence=0.0, max_faces=5)[0]  # no overflow warnings
    assert len(every) == 5 and bool((every.scores[:-1] >= every.scores[1:]).all())
    assert bool((every.boxes[:, :2] >= 0).all() and (every.boxes[:, 2] <= 640).all())
    assert len(blaze.detect([chw(astronaut)], min_confidence=1.0)[0]) == 0
    strict = BlazeFaceDetector(DetectorOptions(min_face_size=400))
    assert len(strict.detect([chw(astronaut)])[0]) == 0  # the face is ~120 px: below the minimum


def test_anchors_and_framing() -> None:
    """Anchor centres follow the network's output order; the framing makes boxes taller, like the SSD's."""
    a = anchor_centres(128, 128, ((8, 2), (16, 6)))
    assert a.shape == (16 * 16 * 2 + 8 * 8 * 6, 2)
    assert a[0].tolist() == a[1].tolist() == [4.0, 4.0] and a[2].tolist() == [12.0, 4.0]
    assert a[512].tolist() == [8.0, 8.0]
    square = np.array([[100, 100, 200, 200]], np.float32)
    for framing in FRAMING.values():
        b = to_ssd_framing(square, framing)[0]
        assert (b[3] - b[1]) > (b[2] - b[0]) and abs((b[0] + b[2]) / 2 - 150) < 5


def test_auto_picks_blazeface_only_where_openvino_runs() -> None:
    assert resolve_detector("auto", "openvino") == "blazeface"
    assert resolve_detector("auto", "torch") == "ssd"
    assert resolve_detector("haar", "openvino") == "haar"
    with pytest.raises(ValueError, match="unknown detector"):
        resolve_detector("yolo", "torch")
    with pytest.raises(ValueError, match="CPU only"):
        BlazeFaceDetector(device="cuda")


def test_server_pipeline_proposes_with_blazeface_and_frames_with_the_ssd(
    astronaut: np.ndarray, tiny_checkpoint: Path, ssd: SSDFaceDetector
) -> None:
    """``EMOTION_DETECTOR=blazeface``: BlazeFace proposes, the SSD's region pass confirms and frames
    (the box is the SSD's, not BlazeFace's), also for faces close enough to share regions."""
    from server.api.options import default_options
    from server.config import Settings
    from server.pipeline.decode import DecodedImage
    from server.pipeline.roi import ProposedRegions
    from server.pipeline.runner import Job, build_pipeline

    settings = Settings(checkpoint=tiny_checkpoint, detector="blazeface", backend="openvino")
    pipe = build_pipeline(settings, "cpu")
    assert isinstance(pipe.detector, ProposedRegions) and pipe.region_detector is pipe.detector.refiner
    got = pipe.detector.detect([chw(astronaut)])[0]
    assert len(got) == 1 and float(box_iou(got.boxes, ssd.detect([chw(astronaut)])[0].boxes)[0, 0]) > 0.8
    raw = pipe.detector.proposer.detect([chw(astronaut)])[0].boxes
    assert not torch.allclose(got.boxes, raw)  # the SSD's framing, not BlazeFace's
    # Three faces side by side, each region reaching its neighbours: each still gets its own face.
    face = astronaut[10:230, 150:310]
    row = np.full((300, 600, 3), 90, np.uint8)
    for k, img in enumerate((face, face[:, ::-1], face)):
        row[40:260, 20 + 190 * k : 180 + 190 * k] = img
    found = pipe.detector.detect([chw(row)])[0]
    whole = ssd.detect([chw(row)])[0]
    assert len(found) == 3 and len(whole) >= 3
    matched = box_iou(found.boxes, whole.boxes).max(1).values
    assert bool((matched > 0.7).all()), matched
    options = default_options(settings)
    jobs = [Job(DecodedImage(chw(img), 0.0), options) for img in (astronaut, row)]
    assert [len(r.faces) for r in pipe.run(jobs)] == [1, 3]


def test_unconfirmed_proposals_keep_their_own_box() -> None:
    """A proposal the region SSD does not confirm stays, with BlazeFace's box; confirmed ones are
    the SSD's; best first, at most ``max_faces``."""
    from server.pipeline.roi import _with_unconfirmed
    from server.pipeline.types import Detections

    proposals = Detections(torch.tensor([[10.0, 10, 60, 70], [200, 50, 240, 100]]), torch.tensor([0.9, 0.8]))
    refined = Detections(torch.tensor([[12.0, 8, 62, 72]]), torch.tensor([0.99]))
    out = _with_unconfirmed(refined, proposals, None)
    assert out.boxes.tolist() == [[12.0, 8, 62, 72], [200, 50, 240, 100]]
    assert out.scores[1] == proposals.scores[1]
    assert len(_with_unconfirmed(refined, proposals, 1)) == 1
    none = Detections(torch.zeros((0, 4)), torch.zeros(0))
    assert torch.equal(_with_unconfirmed(none, proposals, None).boxes, proposals.boxes)
    assert torch.equal(
        _with_unconfirmed(refined, Detections(refined.boxes, refined.scores), None).boxes, refined.boxes
    )


def test_live_server_with_blazeface(tiny_checkpoint: Path, astronaut: np.ndarray) -> None:
    """A real server on loopback with ``EMOTION_DETECTOR=blazeface``: REST finds the faces of a
    three-face scene and a ~48 px face in a webcam-sized frame, none in a face-less one, and says
    which detector answered."""
    import httpx
    from server_harness import LiveServer, face_tile, faces_canvas, jpeg, server_settings

    from shared.protocol import PredictResponse

    with LiveServer(server_settings(tiny_checkpoint, detector="blazeface", backend="openvino")) as srv:
        info = httpx.get(srv.url + "/v1/info").json()
        assert info["detector"]["kind"] == "blazeface" and info["backend"] == "openvino"

        def faces(img: np.ndarray) -> list[tuple[int, int, int, int]]:
            resp = httpx.post(
                srv.url + "/v1/predict", content=jpeg(img), headers={"content-type": "image/jpeg"}, timeout=30
            )
            assert resp.status_code == 200, resp.text
            reply = PredictResponse.model_validate_json(resp.content)
            return [(f.box.x, f.box.y, f.box.x + f.box.w, f.box.y + f.box.h) for f in reply.faces]

        assert len(faces(faces_canvas(astronaut))) == 3
        frame = np.full((480, 640, 3), 120, np.uint8)
        frame[300:396, 450:546] = face_tile(astronaut, 96)  # the face is about half the tile
        found = faces(frame)
        assert len(found) == 1 and found[0][0] >= 440 and found[0][2] <= 556
        assert faces(np.full((480, 640, 3), 90, np.uint8)) == []
