"""training.quantize_ssd: the int8 face detector build, made from photos and read back by the server."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from server_harness import face_tile, jpeg
from torchvision.ops import box_iou

from server.pipeline.backend import compile_module, read_int8
from server.pipeline.detect import DetectorOptions, SSDFaceDetector, build_detector
from training.photo_crops import is_heldout, person_of

pytest.importorskip("nncf")
pytest.importorskip("openvino")


def test_quantized_build_is_read_back_and_finds_the_face(astronaut: np.ndarray, tmp_path: Path) -> None:
    from training.quantize_ssd import calibration_photos, main

    photos = tmp_path / "photos"
    for i in range(8):
        path = photos / "neutral" / f"Person_{i}_0001.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg(face_tile(astronaut, 160 + 20 * i)))
    chosen = calibration_photos(photos, 100, 0.5, "", 0)
    assert chosen and all(not is_heldout(person_of(p), 0.5) for p in chosen)  # held-out people unseen
    out = tmp_path / "int8" / "ssd.xml"
    main(["--data", str(photos), "--out", str(out)])
    made = json.loads(out.with_suffix(".json").read_text())
    assert made["calibration_inputs"] == len(chosen)

    ref = build_detector("ssd")
    det = build_detector("ssd")
    assert isinstance(det, SSDFaceDetector)
    example = det.preprocess([torch.zeros((3, 300, 300), dtype=torch.uint8)])
    assert read_int8(out, det.model, example) is not None
    det.model = compile_module(det.model, example, "openvino", int8=out)
    assert det.model.precision == "int8"
    frame = torch.from_numpy(np.ascontiguousarray(astronaut)).permute(2, 0, 1)
    want, got = ref.detect([frame])[0], det.detect([frame])[0]
    assert len(want) == len(got) == 1
    assert float(box_iou(want.boxes, got.boxes)[0, 0]) >= 0.8

    # The streams' region size: calibrated on the regions searched around the faces found.
    out96 = tmp_path / "int8" / "ssd-96.xml"
    main(["--data", str(photos), "--out", str(out96), "--input-size", "96x96"])
    assert json.loads(out96.with_suffix(".json").read_text())["calibration_inputs"] >= 1  # one per face found
    region = build_detector("ssd", DetectorOptions(input_size=(96, 96)))
    at96 = region.preprocess([torch.zeros((3, 96, 96), dtype=torch.uint8)])  # type: ignore[attr-defined]
    assert read_int8(out96, region.model, at96) is not None  # type: ignore[attr-defined]
    assert read_int8(out96, det.model, example) is None  # not for the 300x300 input

    # --float-heads deep: every head but the first keeps float box and score layers.
    deep = tmp_path / "int8" / "ssd-deep.xml"
    main(["--data", str(photos), "--out", str(deep), "--float-heads", "deep"])
    assert json.loads(deep.with_suffix(".json").read_text())["float_heads"] == "deep"

    def quantized_heads(xml: Path) -> set[str]:
        """The heads whose convolution weights went through a FakeQuantize, e.g. {"loc.0", ...}."""
        import openvino as ov

        names = [op.get_friendly_name() for op in ov.Core().read_model(xml).get_ops()]
        heads = {f"{kind}.{i}" for kind in ("loc", "conf") for i in range(6)}
        return {h for h in heads if any(f".{h}/" in n and "fq_weights" in n for n in names)}

    assert quantized_heads(out) == {f"{kind}.{i}" for kind in ("loc", "conf") for i in range(6)}
    assert quantized_heads(deep) == {"loc.0", "conf.0"}
    assert read_int8(deep, ref.model, example) is not None  # type: ignore[attr-defined]
