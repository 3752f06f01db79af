"""training.distill_ssd: a thinner SSD cut from the original, trained on its outputs, read by the server."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from server_harness import chw, face_tile, faces_canvas, jpeg

from server.config import Settings
from server.pipeline.boxes import box_iou
from server.pipeline.detect import DISTILLED_SSD, DetectorWeightsError, SSDFaceDetector, build_detector
from server.pipeline.detect.network import BlobInput, Res10SSD
from server.pipeline.detect.ssd import BGR_MEAN
from server.pipeline.detect.weights import read_distilled
from training.distill_ssd import FrameMaker, distill_loss, main, thin_state


@pytest.fixture(scope="module")
def teacher() -> SSDFaceDetector:
    det = build_detector("ssd")
    assert isinstance(det, SSDFaceDetector)
    return det


def student(det: SSDFaceDetector, width: float) -> BlobInput:
    anchors = tuple(len(s.box_sizes) for s in det.prior_specs)
    net = BlobInput(Res10SSD(anchors, width=width), BGR_MEAN)
    net.net.load_state_dict(thin_state(det.model.net.state_dict(), net.net.state_dict()))
    return net.eval()


def test_full_width_cut_is_the_teacher_and_thinner_cuts_keep_every_prior(
    teacher: SSDFaceDetector, astronaut: np.ndarray
) -> None:
    x = torch.from_numpy(np.ascontiguousarray(astronaut[:300, :300]))[None]
    with torch.inference_mode():
        want = teacher.model(x)
        same = student(teacher, 1.0)(x)
        half = student(teacher, 0.5)(x)
    assert torch.equal(want[0], same[0]) and torch.equal(want[1], same[1])
    assert half[0].shape == want[0].shape and half[2] == want[2]  # the same priors, so the same decoding
    half_params = sum(p.numel() for p in student(teacher, 0.5).parameters())
    assert half_params < 0.3 * sum(p.numel() for p in teacher.model.parameters())


def test_distillation_steps_bring_the_student_towards_the_teacher(
    teacher: SSDFaceDetector, astronaut: np.ndarray, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    net = student(teacher, 0.25).train()
    photo = tmp_path / "neutral" / "Person_0001.jpg"
    photo.parent.mkdir()
    photo.write_bytes(jpeg(astronaut))
    x = FrameMaker([photo], None, teacher.input_size, seed=0).batch(2)
    with torch.no_grad():
        target = teacher.model(x)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = distill_loss(net(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0]


def test_distill_runs_resumes_and_writes_weights_the_server_reads(
    astronaut: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = tmp_path / "photos"
    for i in range(6):
        path = photos / "neutral" / f"Person_{i}_0001.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg(face_tile(astronaut, 200 + 20 * i)))
    out = tmp_path / "run"
    common = ["--data", str(photos), "--out", str(out), "--width", "0.25", "--steps", "2", "--batch", "2"]
    main([*common, "--epochs", "1", "--val-frames", "4"])
    main([*common, "--epochs", "2", "--val-frames", "4"])
    assert "resumed after epoch 1" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(0.0 <= r["recall"] <= 1.0 for r in rows)

    weights = out / "best.safetensors"
    det = build_detector("distilled", ssd_weights=weights)
    assert isinstance(det, SSDFaceDetector) and det.model.net.width == 0.25 and det.name == "distilled"
    assert Settings(distilled_weights=weights).distilled_weights == weights  # EMOTION_DISTILLED_WEIGHTS
    frame = chw(astronaut)
    assert det.detect([frame])[0].boxes.shape[1] == 4  # runs; four training steps promise no face

    # --init: a thinner student starts from the shipped half-width one's most used channels (lr 0: as cut)
    thin = tmp_path / "thin"
    tiny = ["--width", "0.25", "--steps", "1", "--batch", "2", "--epochs", "1", "--val-frames", "4"]
    main([*common[:2], "--out", str(thin), *tiny, "--lr", "0", "--init", str(DISTILLED_SSD)])
    half, _, _ = read_distilled(DISTILLED_SSD)
    got, width, _ = read_distilled(thin / "best.safetensors")
    assert width == 0.25
    want = thin_state({k: v.float() for k, v in half.items()}, got)
    assert all(torch.equal(got[k].float(), want[k]) for k in want)


def test_unreadable_or_unfitting_distilled_weights_are_named(tmp_path: Path) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(DetectorWeightsError, match=r"junk\.safetensors"):
        build_detector("ssd", ssd_weights=junk)
    from safetensors.torch import save_file

    wrong = tmp_path / "wrong.safetensors"
    save_file({"conv1.weight": torch.zeros(1)}, str(wrong), metadata={"width": "0.5"})
    with pytest.raises(DetectorWeightsError, match=r"width 0\.5"):
        build_detector("ssd", ssd_weights=wrong)
    with pytest.raises(ValueError, match="EMOTION_DISTILLED_WEIGHTS"):
        Settings(detector="distilled", distilled_weights=tmp_path / "missing.safetensors")
    Settings(detector="ssd", distilled_weights=tmp_path / "missing.safetensors")  # not used: not checked


def test_shipped_distilled_ssd_proposes_the_faces_the_original_finds(
    teacher: SSDFaceDetector, astronaut: np.ndarray
) -> None:
    """``EMOTION_DETECTOR=distilled``'s proposer: at its proposal threshold, every face the original finds on
    real photos is among its proposals (IoU >= 0.7); a frame of noise gets none."""
    from server.pipeline.runner import DISTILLED_PROPOSAL_FLOOR

    distilled = build_detector("distilled")
    assert isinstance(distilled, SSDFaceDetector) and distilled.weights == DISTILLED_SSD
    assert distilled.model.net.width == 0.5
    noise = np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8)
    images = [astronaut, faces_canvas(astronaut), faces_canvas(astronaut, (64, 96, 128)), noise]
    tensors = [chw(img) for img in images]
    want, got = teacher.detect(tensors), distilled.detect(tensors, DISTILLED_PROPOSAL_FLOOR)
    assert [len(d) for d in want] == [1, 3, 3, 0] and len(got[-1]) == 0
    for w, g in zip(want[:3], got[:3], strict=True):
        assert float(box_iou(w.boxes, g.boxes).max(1).values.min()) >= 0.7


def test_distilled_detector_keeps_the_original_ssds_faces_and_framing(
    teacher: SSDFaceDetector, astronaut: np.ndarray
) -> None:
    """``EMOTION_DETECTOR=distilled``, as the server builds it (the distilled SSD proposes; faces it is sure
    of are kept in its framing, the original SSD's region pass confirms and frames the others): the
    original's faces, framed within IoU 0.7 of the original's whole-image boxes."""
    from server.pipeline.roi import ProposedRegions
    from server.pipeline.runner import build_pipeline

    detector = build_pipeline(Settings(detector="distilled", warmup=False), "cpu").detector
    assert isinstance(detector, ProposedRegions) and not detector.keep_unconfirmed
    noise = np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8)
    images = [astronaut, faces_canvas(astronaut), faces_canvas(astronaut, (64, 96, 128)), noise]
    tensors = [chw(img) for img in images]
    want, got = teacher.detect(tensors), detector.detect(tensors)
    for w, g in zip(want, got, strict=True):
        assert len(g) == len(w)
        if len(w):
            assert float(box_iou(w.boxes, g.boxes).max(1).values.min()) >= 0.7


def test_sure_proposals_skip_the_region_pass_and_pieces_of_a_sure_face_are_dropped(
    astronaut: np.ndarray,
) -> None:
    """A face the distilled SSD scores >= DISTILLED_TRUST costs no region pass; of the doubtful proposals,
    one lying on a sure face (a piece of it) is dropped, one elsewhere is left for the region pass."""
    from server.pipeline.roi import ProposedRegions, _split_trusted
    from server.pipeline.runner import DISTILLED_PROPOSAL_FLOOR, DISTILLED_TRUST, build_pipeline
    from server.pipeline.types import Detections

    detector = build_pipeline(Settings(detector="distilled", warmup=False), "cpu").detector
    assert isinstance(detector, ProposedRegions) and detector.trust_above == DISTILLED_TRUST
    image = chw(astronaut)
    proposals = detector.proposer.detect([image], DISTILLED_PROPOSAL_FLOOR)[0]
    sure, doubtful = _split_trusted([proposals], DISTILLED_TRUST)
    assert len(sure[0]) == 1  # her face; the doubtful proposals lie elsewhere in the photo
    before = detector.refiner.regions
    found = detector.detect([image])[0]
    assert detector.refiner.regions - before == len(doubtful[0])  # the face itself was not searched again
    assert len(found) == 1 and torch.equal(found.boxes, sure[0].boxes.float())  # in the proposer's framing

    face, piece, elsewhere = [100.0, 100.0, 200.0, 220.0], [150.0, 180.0, 190.0, 215.0], [400, 50, 460, 120]
    boxes = torch.tensor([face, piece, elsewhere], dtype=torch.float32)
    trusted, doubtful = _split_trusted([Detections(boxes, torch.tensor([0.99, 0.3, 0.4]))], DISTILLED_TRUST)
    assert torch.equal(trusted[0].boxes, boxes[:1]) and torch.equal(doubtful[0].boxes, boxes[2:])
