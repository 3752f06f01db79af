"""training.photo_crops: server-made face crops split by person, and training with them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from server_harness import face_tile, jpeg

from server.model.checkpoint import CropSpec
from server.pipeline.crop import crop_faces
from training import train
from training.data import load_dataset
from training.photo_crops import is_heldout, make_crops, person_of


def test_person_is_the_name_without_its_number() -> None:
    assert person_of(Path("neutral/Aaron_Eckhart_0001.jpg")) == "Aaron_Eckhart"
    assert person_of(Path("happiness/Jayamadhuri_125.jpg")) == "Jayamadhuri"
    assert person_of(Path("anger/facial-expressions_2868588k.jpg")) == "facial-expressions_2868588k"


def test_split_is_per_person_deterministic_and_near_the_fraction() -> None:
    people = [f"person_{i}" for i in range(2000)]
    held = [is_heldout(p, 0.3) for p in people]
    assert held == [is_heldout(p, 0.3) for p in people]
    assert 0.25 < sum(held) / len(people) < 0.35
    assert [is_heldout(p, 0.3, salt="b") for p in people] != held  # the salt moves people


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> Path:
    """Six people with two photos each (happiness, neutral), one face-less photo, one contempt photo,
    one file that is no JPEG."""
    root = tmp_path_factory.mktemp("photos")
    for i in range(6):
        for k, cls in enumerate(("happiness", "neutral")):
            path = root / cls / f"Person_{i}_{k + 1:04d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(jpeg(face_tile(astronaut, 200 + 40 * i + 10 * k)))
    (root / "sadness").mkdir()
    (root / "sadness" / "Nobody_0001.jpg").write_bytes(jpeg(np.full((300, 300, 3), 90, np.uint8)))
    (root / "happiness" / "Broken_0001.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (root / "contempt").mkdir()
    (root / "contempt" / "Person_0_0003.jpg").write_bytes(jpeg(face_tile(astronaut, 250)))
    return root


@pytest.fixture(scope="module")
def crops(photos: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("crops")
    make_crops(photos, out, tiny_checkpoint, heldout_fraction=0.5, salt="t")
    return out


def test_crops_keep_each_person_on_one_side(crops: Path, photos: Path) -> None:
    manifest = json.loads((crops / "manifest.json").read_text())
    assert manifest["persons_in_both"] == 0
    assert manifest["counts"]["no_face"] == 1  # the grey photo; contempt is no model class: not listed
    assert manifest["counts"]["undecodable"] == 1
    sides = {
        person_of(Path(p.name.split("_", 1)[1])): p.parent.parent.name for p in crops.glob("crops/*/*/*.png")
    }
    for p in crops.glob("crops/*/*/*.png"):
        person = person_of(Path(p.name.split("_", 1)[1]))
        assert sides[person] == p.parent.parent.name
        assert (p.parent.parent.name == "test") == is_heldout(person, 0.5, "t")
    assert len(list(crops.glob("crops/*/*/*.png"))) == 12
    assert {"train", "test"} <= set(sides.values())  # six people at 0.5: both sides used
    # the held-out people's original photos, for the whole-pipeline evaluation
    links = sorted(crops.glob("heldout/*/*.jpg"))
    assert links and all(link.resolve().parent.parent == photos.resolve() for link in links)
    # every held-out photo of a model class, the face-less one too when its person is held out:
    # the evaluation must count a photo the detector misses as wrong, not drop it
    faceless_heldout = int(is_heldout("Nobody", 0.5, "t"))
    assert len(links) == len(list(crops.glob("crops/test/*/*.png"))) + faceless_heldout
    assert manifest["counts"].get("heldout_photos/sad", 0) == faceless_heldout


def test_crop_is_the_servers_crop(crops: Path, photos: Path, tiny_checkpoint: Path) -> None:
    """The file holds what the server's crop code makes of the box its pipeline found."""
    from training.evaluate_photos import build_server_pipeline

    pipeline, cfg = build_server_pipeline(tiny_checkpoint, "cpu")
    png = next(crops.glob("crops/*/happy/*Person_3_0001.png"))
    from server.pipeline.decode import decode_image

    img = decode_image((photos / "happiness" / "Person_3_0001.jpg").read_bytes(), max_pixels=cfg.max_pixels)
    det = pipeline.detector.detect([img.tensor], min_confidence=cfg.score_threshold, max_faces=1)[0]
    want = crop_faces([img.tensor], [det.boxes[:1].float()], CropSpec(), 48)[0, 0]
    with Image.open(png) as face:
        got = torch.from_numpy(np.asarray(face, dtype=np.float32))
    assert (got - want).abs().max() <= 0.5 + 1e-4  # rounding to uint8 only


def test_extra_train_joins_training_and_is_scored(crops: Path, tmp_path: Path) -> None:
    crops = crops / "crops"
    fer = load_dataset(crops)  # the crop tree is itself a loadable dataset: train + public
    assert set(fer.split_counts()) == {"train", "public"}
    args = ["--data", str(crops), "--out", str(tmp_path), "--batch-size", "4", "--epochs", "1"]
    args += ["--extra-train", str(crops), "--extra-repeat", "2", "--amp", "off", "--device", "cpu"]
    train.main(args)
    row = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert 0.0 <= row["val_acc_extra_raw"] <= 1.0
    assert row["val_acc_extra_raw"] == row["val_acc_raw"]  # same public split both ways here


def test_one_crop_per_detector(photos: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """``--detectors ssd,blazeface``: each photo cropped by each detector (the framings the server can
    give the classifier), the same people split, each held-out photo linked once."""
    pytest.importorskip("openvino")
    from training.photo_crops import main

    main(["--data", str(photos), "--out", str(tmp_path), "--checkpoint", str(tiny_checkpoint),
          "--salt", "t", "--detectors", "ssd,blazeface"])  # fmt: skip
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert set(manifest["detectors"]) == {"ssd", "blazeface"} and manifest["persons_in_both"] == 0
    crops = sorted(p.name for p in tmp_path.glob("crops/*/*/*.png"))
    for tag in ("ssd", "blazeface"):
        mine = [c for c in crops if c.split("_", 1)[1].startswith(f"{tag}-")]
        assert len(mine) == 12, (tag, mine)  # the 12 face photos of model classes
    links = list(tmp_path.glob("heldout/*/*.jpg"))
    assert len(links) == sum(v for k, v in manifest["counts"].items() if k.startswith("heldout_photos/"))
    assert len(links) == len({link.name for link in links})
    assert manifest["counts"]["undecodable"] == 1  # counted per photo, not per detector pass


def test_rerun_into_the_same_folder_counts_the_same(crops: Path, photos: Path, tiny_checkpoint: Path) -> None:
    """The held-out links survive a re-run; the manifest still counts every held-out photo (and
    with two detectors each photo once: see ``test_one_crop_per_detector``)."""
    before = json.loads((crops / "manifest.json").read_text())["counts"]
    again = make_crops(photos, crops, tiny_checkpoint, heldout_fraction=0.5, salt="t")["counts"]
    assert again == before
    assert sum(v for k, v in again.items() if k.startswith("heldout_photos/")) == len(
        list(crops.glob("heldout/*/*.jpg"))
    )


def test_heldout_only_links_the_same_people_without_a_model(
    crops: Path, photos: Path, tmp_path: Path
) -> None:
    """`--heldout-only`: the held-out photos of the full run, in seconds (the undecodable one too)."""
    from training.photo_crops import main

    main(["--data", str(photos), "--out", str(tmp_path), "--salt", "t", "--heldout-only"])
    quick = {p.relative_to(tmp_path) for p in tmp_path.glob("heldout/*/*.jpg")}
    full = {p.relative_to(crops) for p in crops.glob("heldout/*/*.jpg")}
    broken = {Path("heldout/happiness/Broken_0001.jpg")} if is_heldout("Broken", 0.5, "t") else set()
    assert quick == full | broken and full
    assert not (tmp_path / "crops").exists()
