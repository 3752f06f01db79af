"""The OpenVINO CPU path against the torch reference path: same faces, same answers."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from server.model.checkpoint import DEFAULT_CHECKPOINT, int8_build
from server.pipeline.backend import compile_module, openvino_available, read_int8, resolve_backend
from server.pipeline.classify import EmotionClassifier
from server.pipeline.crop import crop_faces
from server.pipeline.detect import (
    SSD_INT8,
    DetectorOptions,
    SSDFaceDetector,
    build_detector,
    resolve_ssd_weights,
    ssd_int8_build,
)

needs_openvino = pytest.mark.skipif(not openvino_available(), reason="openvino not installed")


def chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).contiguous()


@pytest.fixture(scope="module")
def ov_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One OpenVINO cache for the module: each model is converted once, then read back."""
    return tmp_path_factory.mktemp("openvino-cache")


@pytest.fixture(scope="module")
def frames(astronaut: np.ndarray) -> list[torch.Tensor]:
    """Real photos at several sizes and framings, with 1-3 faces and none."""
    canvas = np.full((480, 640, 3), 90, np.uint8)
    for x, y, s in ((20, 40, 1.0), (250, 150, 0.7), (450, 60, 0.9)):
        f = cv2.resize(astronaut[20:220, 140:320], None, fx=s, fy=s)
        canvas[y : y + f.shape[0], x : x + f.shape[1]] = f
    small = cv2.resize(astronaut, (160, 160))
    empty = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8), (0, 0), 3)
    return [chw(astronaut), chw(canvas), chw(cv2.resize(astronaut, (640, 480))), chw(small), chw(empty)]


def test_resolve_backend() -> None:
    assert resolve_backend("torch", "cpu") == "torch"
    assert resolve_backend("auto", "cpu") == ("openvino" if openvino_available() else "torch")
    with pytest.raises(ValueError, match="unknown backend"):
        resolve_backend("tensorrt", "cpu")
    if openvino_available():
        with pytest.raises(ValueError, match="CPU only"):
            resolve_backend("openvino", "cuda")


@needs_openvino
@pytest.mark.parametrize("weights", ["original", "distilled"])
@pytest.mark.parametrize("precision", ["int8", "auto", "f32"])
def test_ssd_parity(frames: list[torch.Tensor], precision: str, weights: str, ov_cache: Path) -> None:
    """Same faces as torch (IoU >= 0.9, score within 0.02; the shipped int8 build: IoU >= 0.85,
    score within 0.05), one frame at a time and as a batch, for both networks (the original and the
    distilled one, each with its own int8 build; the distilled one's proposals are confirmed by the
    original's region pass in the server, but on its own it must be the same network on both paths)."""
    file = resolve_ssd_weights(weights)
    ref = build_detector("ssd", ssd_weights=file)
    fast = build_detector("ssd", ssd_weights=file)
    assert isinstance(fast, SSDFaceDetector)
    example = fast.preprocess([torch.zeros((3, 300, 300), dtype=torch.uint8)])
    int8 = ssd_int8_build((300, 300), file) if precision == "int8" else None
    mode = "auto" if precision == "int8" else precision
    fast.model = compile_module(
        fast.model, example, "openvino", precision=mode, cache_dir=ov_cache, int8=int8
    )  # type: ignore[arg-type]
    assert (fast.model.precision == "int8") is (precision == "int8")  # the shipped build is of these weights
    expected = ref.detect(frames)
    assert [len(d) for d in expected] == [1, 3, 1, 1, 0]
    min_iou, atol = (0.85, 0.05) if precision == "int8" else (0.9, 0.02)
    for got in (fast.detect(frames), [fast.detect([f])[0] for f in frames]):
        for e, g in zip(expected, got, strict=True):
            assert len(g) == len(e)
            if len(e):
                iou = box_iou(e.boxes, g.boxes)
                assert float(iou.max(1).values.min()) >= min_iou
                assert torch.allclose(g.scores, e.scores, atol=atol)


@needs_openvino
def test_region_pass_int8_parity(frames: list[torch.Tensor], ov_cache: Path) -> None:
    """The streams' region pass (the SSD at ``ROI_INPUT`` on a square around each face) runs its own
    shipped int8 build and finds each face as torch does there: IoU >= 0.85, score within 0.05."""
    from server.pipeline.roi import ROI_INPUT, search_regions

    options = DetectorOptions(input_size=ROI_INPUT)
    ref, fast = build_detector("ssd", options), build_detector("ssd", options)
    assert isinstance(fast, SSDFaceDetector)
    w, h = ROI_INPUT
    example = fast.preprocess([torch.zeros((3, h, w), dtype=torch.uint8)])
    build = ssd_int8_build(ROI_INPUT)
    assert build != SSD_INT8 and build.is_file()
    fast.model = compile_module(fast.model, example, "openvino", cache_dir=ov_cache, int8=build)
    assert fast.model.precision == "int8"
    regions = []
    for img, det in zip(frames[:4], build_detector("ssd").detect(frames[:4]), strict=True):
        _, height, width = img.shape
        for x1, y1, x2, y2 in search_regions(det.boxes, width, height).int().tolist():
            regions.append(img[:, y1:y2, x1:x2])
    assert len(regions) == 6
    for want, got in zip(ref.detect(regions, max_faces=1), fast.detect(regions, max_faces=1), strict=True):
        assert len(want) == len(got) == 1
        assert float(box_iou(want.boxes, got.boxes)[0, 0]) >= 0.85
        assert abs(float(want.scores[0]) - float(got.scores[0])) <= 0.05


@needs_openvino
def test_int8_only_for_its_weights_and_size(caplog: pytest.LogCaptureFixture) -> None:
    """The int8 build runs only for the network and input size it was quantized from: another size
    (the SSD's graph changes with it) or other weights get the float build."""
    det = build_detector("ssd")
    assert isinstance(det, SSDFaceDetector)
    at300 = det.preprocess([torch.zeros((3, 300, 300), dtype=torch.uint8)])
    assert read_int8(SSD_INT8, det.model, at300) is not None
    assert read_int8(SSD_INT8, det.model, at300[:, :96, :96]) is None
    assert read_int8(SSD_INT8.with_name("missing.xml"), det.model, at300) is None
    with torch.no_grad():
        next(det.model.parameters()).add_(0.01)
    assert read_int8(SSD_INT8, det.model, at300) is None
    assert "other weights" in caplog.text
    float_build = compile_module(det.model, at300, "openvino", int8=SSD_INT8)
    assert float_build.precision != "int8"
    no_int8 = compile_module(build_detector("ssd").model, at300, "openvino", precision="float", int8=SSD_INT8)  # type: ignore[union-attr]
    assert no_int8.precision != "int8"  # EMOTION_CPU_PRECISION=float


@needs_openvino
@pytest.mark.parametrize("precision", ["int8", "float", "f32"])
def test_classifier_parity(frames: list[torch.Tensor], precision: str, ov_cache: Path) -> None:
    """The bundled model's probabilities on real face crops against torch: within 1e-4 (f32), 0.03 (the
    float build: bf16 where the CPU has it) or 0.05 (its int8 build, the default; PrivateTest parity
    is measured in docs/benchmarks.md)."""
    ref = EmotionClassifier()
    mode = "auto" if precision == "int8" else precision
    fast = EmotionClassifier(backend="openvino", precision=mode, cache_dir=ov_cache)  # type: ignore[arg-type]
    assert (fast.model.precision == "int8") is (precision == "int8")  # the shipped build is of these weights
    dets = build_detector("ssd").detect(frames[:4])
    rng = np.random.default_rng(0)
    crops = []
    for img, det in zip(frames[:4], dets, strict=True):
        for box in det.boxes:  # the detector box, and jittered ones: a spread of real crops
            jitter = torch.from_numpy(rng.normal(0, 6, (8, 4))).float()
            crops.append(
                crop_faces([img], [torch.cat([box[None], box + jitter])], ref.meta.crop, ref.input_size)
            )
    x = torch.cat(crops)
    assert x.shape[0] == 6 * 9
    p_ref, p_fast = ref.predict(x), fast.predict(x)
    tol = {"int8": 0.05, "float": 0.03, "f32": 1e-4}[precision]
    assert float((p_fast - p_ref).abs().max()) <= tol
    assert float((p_fast.argmax(1) == p_ref.argmax(1)).float().mean()) >= 0.95
    one_by_one = torch.cat([fast.predict(x[i : i + 1]) for i in range(5)])
    assert torch.allclose(one_by_one, p_fast[:5], atol=1e-5)  # dynamic batch: same answer alone


@needs_openvino
def test_classifier_int8_only_for_its_weights(
    tiny_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A checkpoint's int8 build is read from beside it, and only for the weights it was made from:
    the bundled build beside other weights is ignored with a warning and the float build runs."""
    shutil.copy(tiny_checkpoint, tmp_path / "other.safetensors")
    for suffix in (".xml", ".bin"):
        shutil.copy(int8_build(DEFAULT_CHECKPOINT).with_suffix(suffix), tmp_path / f"other.int8{suffix}")
    with caplog.at_level("WARNING"):
        other = EmotionClassifier(tmp_path / "other.safetensors", backend="openvino")
    assert other.model.precision != "int8"
    assert "quantized from other weights" in caplog.text
    assert EmotionClassifier(backend="openvino").model.precision == "int8", (
        "the bundled checkpoint's int8 build is missing or stale: "
        "python -m training.quantize_classifier --data ../shared/data/fer2013.tar.gz"
    )
    assert EmotionClassifier(backend="openvino", precision="float").model.precision != "int8"


def test_flip_tta_averages_the_mirror_image(astronaut: np.ndarray) -> None:
    plain = EmotionClassifier()
    tta = EmotionClassifier(flip_tta=True)
    img = chw(astronaut)
    box = torch.tensor([[170.0, 20.0, 290.0, 200.0], [150.0, 30.0, 300.0, 210.0]])
    x = crop_faces([img], [box], plain.meta.crop, plain.input_size)
    expected = (plain.predict(x) + plain.predict(x.flip(3))) / 2
    assert torch.allclose(tta.predict(x), expected, atol=1e-5)
    assert not torch.allclose(plain.predict(x), expected, atol=1e-4)  # the flip does change the answer


def test_prior_shift_reweights_the_scores_after_flip_tta(astronaut: np.ndarray) -> None:
    img = chw(astronaut)
    box = torch.tensor([[170.0, 20.0, 290.0, 200.0], [150.0, 30.0, 300.0, 210.0], [0.0, 0.0, 120.0, 120.0]])
    for tta in (False, True):
        shifted, raw = EmotionClassifier(flip_tta=tta), EmotionClassifier(flip_tta=tta, prior_shift=False)
        assert shifted.meta.prior_shift and shifted.prior_shift and not raw.prior_shift  # bundled: has one
        x = crop_faces([img], [box], raw.meta.crop, raw.input_size)
        torch.testing.assert_close(shifted.predict(x), shifted.meta.shifted(raw.predict(x)))
        assert not torch.allclose(shifted.predict(x), raw.predict(x), atol=1e-3)


def test_prior_shift_setting_reaches_the_classifier() -> None:
    from server.config import Settings
    from server.pipeline.runner import build_pipeline

    for on in (True, False):  # the bundled checkpoint has a shift; EMOTION_PRIOR_SHIFT=false turns it off
        assert build_pipeline(Settings(prior_shift=on, backend="torch"), "cpu").classifier.prior_shift is on


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_pipeline_with_flip_tta(backend: str, astronaut: np.ndarray, tiny_checkpoint: Path) -> None:
    """The server's pipeline builder honours the backend and flip TTA settings end to end."""
    from server.api.options import default_options
    from server.config import Settings
    from server.pipeline.decode import DecodedImage
    from server.pipeline.roi import ProposedRegions
    from server.pipeline.runner import Job, build_pipeline

    settings = Settings(checkpoint=tiny_checkpoint, backend=backend, flip_tta=True)
    pipe = build_pipeline(settings, "cpu")
    assert pipe.classifier.flip_tta
    assert isinstance(pipe.detector, ProposedRegions)  # the default, distilled: its proposer is an SSD
    assert isinstance(pipe.detector.proposer, SSDFaceDetector)
    expect_ov = resolve_backend(backend, "cpu") == "openvino"
    assert isinstance(pipe.detector.proposer.model, torch.nn.Module) is not expect_ov
    result = pipe.run([Job(DecodedImage(chw(astronaut), 0.0), default_options(settings))])[0]
    assert len(result.faces) == 1 and abs(float(result.faces[0].probs.sum()) - 1.0) < 1e-4
