"""`emotion-eval --detect`: the whole server pipeline on a tiny generated folder of photos."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from server_harness import LiveServer, face_tile, jpeg, server_settings

from training.evaluate import main as eval_main
from training.evaluate import parse_grid


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> Path:
    """happiness/: 3 faces (sizes, one on a 4:3 canvas); sadness/: 1 face + 1 face-less photo;
    anger/: 1 face-less photo; contempt/: 1 face (no FER2013 class); neutral/: 1 corrupt file."""
    root = tmp_path_factory.mktemp("photos")
    canvas = np.full((480, 640, 3), 128, np.uint8)
    canvas[40:340, 200:500] = face_tile(astronaut, 300)
    grey = np.full((300, 400, 3), 90, np.uint8)
    files = {
        "happiness/a.jpg": jpeg(face_tile(astronaut, 350)),
        "happiness/b.png": None,
        "happiness/c.jpg": jpeg(canvas),
        "sadness/d.jpg": jpeg(face_tile(astronaut, 250)),
        "sadness/e.jpg": jpeg(grey),
        "anger/f.jpg": jpeg(grey),
        "contempt/g.jpg": jpeg(face_tile(astronaut, 300)),
        "neutral/h.jpg": b"\xff\xd8\xff not really a jpeg",
        "notes.txt": b"not an image",
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if data is None:
            Image.fromarray(face_tile(astronaut, 200)).save(path)
        else:
            path.write_bytes(data)
    return root


@pytest.fixture(scope="module")
def result(photo_dir: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("eval")
    eval_main(
        [
            "--detect",
            "--data",
            str(photo_dir),
            "--checkpoint",
            str(tiny_checkpoint),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--batch-size",
            "3",
            "--framing-grid",
            "0,0.1:0:true,false",
            "--no-progress",
        ]
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "confusion.png").stat().st_size > 1000
    metrics["_report"] = (out / "report.md").read_text()
    return metrics


def test_counts_faces_skips_and_failures(result: dict) -> None:
    assert result["n_photos"] == 7  # contempt skipped; the corrupt neutral photo is scored
    assert result["skipped"] == {"contempt": 1}
    assert result["faces_per_photo"] == {"0": 3, "1": 4, "2+": 0}
    assert result["n_with_face"] == 4
    assert [Path(p).name for p in result["undecodable"]] == ["h.jpg"]
    assert result["per_class_photos"]["angry"] == {"recall": 0.0, "support": 1, "no_face": 1}
    assert result["per_class_photos"]["sad"]["no_face"] == 1
    assert result["predicted_histogram"]["no face"] == 3
    assert sum(result["predicted_histogram"].values()) == 7
    assert sum(result["predicted_histogram_by_true"]["happy"].values()) == 3


def test_accuracies_agree_with_the_per_photo_answers(result: dict) -> None:
    photos = result["photos"]
    correct = [p["first"] == p["label"] for p in photos]
    assert result["accuracy_photos"] == pytest.approx(sum(correct) / 7)
    with_face = [c for c, p in zip(correct, photos, strict=True) if p["faces"]]
    assert result["accuracy_first_face"] == pytest.approx(sum(with_face) / len(with_face))
    assert sum(map(sum, result["confusion_matrix"])) == 4
    assert len(result["framings"]) == 4 and all(0 <= f["accuracy_photos"] <= 1 for f in result["framings"])
    # The main run and the grid row with the same framing score the same.
    same = [f for f in result["framings"] if f["margin"] == 0 and f["y_shift"] == 0 and f["square"]]
    assert same[0]["accuracy_photos"] == pytest.approx(result["accuracy_photos"])
    assert "faces per photo" in result["_report"] and "| happy | 3 |" in result["_report"]


def test_calibration_is_that_of_the_per_photo_scores(result: dict) -> None:
    """The report's calibration block is computed from the first faces' scores it lists."""
    classes = result["classes"]
    firsts = [p for p in result["photos"] if p["faces"]]
    assert all(len(p["scores"]) == len(classes) for p in firsts)
    assert all(p["scores"] is None for p in result["photos"] if not p["faces"])
    label_scores = [p["scores"][classes.index(p["label"])] for p in firsts]
    cal = result["calibration_first_face"]
    assert cal["nll"] == pytest.approx(-np.mean(np.log(label_scores)), abs=1e-3)
    assert cal["mean_confidence"] == pytest.approx(np.mean([max(p["scores"]) for p in firsts]), abs=1e-4)
    assert sum(m["n"] for m in cal["by_prediction"].values()) == len(firsts)
    assert "What a score means" in result["_report"]


def test_first_face_is_what_the_server_answers(result: dict, tiny_checkpoint: Path) -> None:
    """Each photo's first face and label equal POST /v1/predict's first face on a live server."""
    srv = LiveServer(server_settings(tiny_checkpoint)).start()
    try:
        for p in result["photos"]:
            r = httpx.post(
                srv.url + "/v1/predict",
                content=Path(p["path"]).read_bytes(),
                headers={"Content-Type": "application/octet-stream"},
                timeout=30,
            )
            if p["faces"] == 0 and Path(p["path"]).name == "h.jpg":
                assert r.status_code in (400, 415, 422)
                continue
            faces = r.json()["faces"]
            assert len(faces) == p["faces"], p["path"]
            if faces:
                assert faces[0]["dominant"] == p["first"], p["path"]
                server_scores = [faces[0]["emotions"][c] for c in result["classes"]]
                assert server_scores == pytest.approx(p["scores"], abs=1e-3), p["path"]
                b = faces[0]["box"]
                assert abs(b["x"] - p["box"][0]) <= 1 and abs(b["y"] - p["box"][1]) <= 1
    finally:
        srv.stop()


def test_grid_parsing_and_refusals(photo_dir: Path) -> None:
    specs = parse_grid("0,0.1:-0.05,0.05:true,false")
    assert len(specs) == 8 and {s.square for s in specs} == {True, False}
    with pytest.raises(SystemExit):
        parse_grid("0,0.1")
    with pytest.raises(SystemExit, match="--bundle"):
        eval_main(["--detect", "--data", str(photo_dir), "--bundle", "x.safetensors"])
    with pytest.raises(SystemExit, match="folder"):
        eval_main(["--detect", "--data", str(photo_dir / "notes.txt")])


def test_a_large_photo_is_decoded_and_cropped_as_the_server_does(
    tmp_path: Path, astronaut: np.ndarray, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A photo larger than the server's work size: the pipeline gets the tensor the server decodes
    (reduced), and the framing grid's row with the checkpoint's framing crops what the main run crops."""
    import torch

    from server.config import Settings
    from server.model.checkpoint import CropSpec
    from server.pipeline.classify import EmotionClassifier
    from server.pipeline.decode import decode_image
    from server.pipeline.runner import Pipeline, work_size
    from training.evaluate_photos import evaluate_photos

    data = jpeg(face_tile(astronaut, 2560))
    (tmp_path / "happiness").mkdir()
    (tmp_path / "happiness" / "big.jpg").write_bytes(data)
    settings = Settings(checkpoint=tiny_checkpoint, device="cpu")
    server_tensor = decode_image(data, max_pixels=settings.max_pixels, work_size=work_size(settings)).tensor
    assert server_tensor.shape[1] < 2560  # the server decodes it reduced

    shapes: list[tuple[int, ...]] = []
    crops: list[torch.Tensor] = []
    run, predict = Pipeline.run, EmotionClassifier.predict
    monkeypatch.setattr(
        Pipeline,
        "run",
        lambda self, jobs: shapes.extend(j.image.tensor.shape for j in jobs) or run(self, jobs),
    )
    monkeypatch.setattr(
        EmotionClassifier, "predict", lambda self, x: crops.append(x.clone()) or predict(self, x)
    )
    result = evaluate_photos(tmp_path, tiny_checkpoint, framings=[CropSpec()], progress=False)
    assert result["n_with_face"] == 1
    assert shapes[-1] == server_tensor.shape  # (the pipeline's warm-up runs before)
    main_crop, grid_crop = crops[-2:]
    torch.testing.assert_close(grid_crop, main_crop)
