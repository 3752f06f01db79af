"""training.quantize_classifier: a checkpoint's int8 build, written beside it and read back by the server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from synthetic_fer import fer_tree

from server.model.checkpoint import int8_build
from server.pipeline.backend import SOURCE_KEY
from server.pipeline.classify import EmotionClassifier

pytest.importorskip("nncf")
pytest.importorskip("openvino")


def test_int8_build_is_written_beside_the_checkpoint_and_used(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from training.quantize_classifier import main

    data = fer_tree(tmp_path / "fer", {"angry": 12, "happy": 12}, n_public=2, n_private=2)
    checkpoint = tmp_path / "model.safetensors"
    shutil.copy(tiny_checkpoint, checkpoint)
    main(["--data", str(data), "--checkpoint", str(checkpoint), "--n", "100"])
    xml = int8_build(checkpoint)
    assert xml == tmp_path / "model.int8.xml" and xml.with_suffix(".bin").is_file()
    made = json.loads(xml.with_suffix(".json").read_text())
    assert made["calibration_inputs"] == 24 and made[SOURCE_KEY]  # training faces only, not the 8 test ones

    fast = EmotionClassifier(checkpoint, backend="openvino")
    ref = EmotionClassifier(checkpoint)
    assert fast.model.precision == "int8"
    x = torch.randint(0, 256, (6, 1, 48, 48)).float()
    p_fast, p_ref = fast.predict(x), ref.predict(x)
    assert p_fast.shape == (6, 7) and torch.allclose(p_fast.sum(1), torch.ones(6), atol=1e-4)
    assert float((p_fast - p_ref).abs().max()) < 0.1  # quantized, not another network
