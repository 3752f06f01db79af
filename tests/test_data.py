"""FER2013 loaders on tiny synthetic datasets in every supported form."""

from __future__ import annotations

import csv
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.emotions import EMOTIONS, canonical_emotion
from training.data import DatasetError, load_dataset


def _face(seed: int, size: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


def _write_tree(root: Path, with_prefixes: bool = True) -> dict[str, int]:
    """train/ + test/ image folders with FER-style names (and synonym class names)."""
    layout = {
        ("train", "anger"): ("Training", 4),
        ("train", "happiness"): ("Training", 3),
        ("test", "anger"): ("PublicTest", 2),
        ("test", "happy"): ("PrivateTest", 2),
        ("test", "surprised"): ("PrivateTest", 1),
    }
    i = 0
    for (top, cls), (prefix, n) in layout.items():
        d = root / top / cls
        d.mkdir(parents=True, exist_ok=True)
        for _ in range(n):
            name = f"{prefix}_{i}.jpg" if with_prefixes else f"img_{i}.png"
            Image.fromarray(_face(i)).save(d / name)
            i += 1
    return {"train": 7, "public": 2, "private": 3}


def test_synonyms() -> None:
    assert canonical_emotion("Happiness") == "happy"
    assert canonical_emotion("surprised") == "surprise"
    assert canonical_emotion("contempt") is None


def test_folder_layout_uses_filename_prefixes(tmp_path: Path) -> None:
    expected = _write_tree(tmp_path)
    ds = load_dataset(tmp_path)
    assert ds.split_counts() == expected
    assert ds.images.shape == (12, 48, 48) and ds.images.dtype == np.uint8
    private = ds.subset("private")
    assert sorted(EMOTIONS[i] for i in private.labels) == ["happy", "happy", "surprise"]


def test_tar_gz_matches_folder(tmp_path: Path) -> None:
    _write_tree(tmp_path / "tree")
    archive = tmp_path / "fer.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "tree" / "train", arcname="train")
        tar.add(tmp_path / "tree" / "test", arcname="test")
    a, b = load_dataset(tmp_path / "tree"), load_dataset(archive)
    assert a.fingerprint() == b.fingerprint()


def test_without_prefixes_test_folder_is_test_and_val_is_carved(tmp_path: Path) -> None:
    _write_tree(tmp_path, with_prefixes=False)
    ds = load_dataset(tmp_path, val_fraction=0.25)
    counts = ds.split_counts()
    assert counts["test"] == 5
    assert counts["val"] >= 1 and counts["train"] + counts["val"] == 7


def test_csv_with_odd_header_spellings(tmp_path: Path) -> None:
    path = tmp_path / "icml_face_data.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["emotion", " Usage", " pixels"])
        for i, (label, usage) in enumerate(
            [(0, "Training"), (3, "Training"), (6, "PublicTest"), (5, "PrivateTest")]
        ):
            w.writerow([label, usage, " ".join(map(str, _face(i).ravel()))])
    ds = load_dataset(path)
    assert ds.split_counts() == {"train": 2, "public": 1, "private": 1}
    assert ds.labels.tolist() == [0, 3, 6, 5]
    np.testing.assert_array_equal(ds.images[1], _face(1))


def test_generic_class_folder_skips_unknown_classes(tmp_path: Path) -> None:
    for cls, n in {"happy": 2, "contempt": 3, "sadness": 1}.items():
        (tmp_path / cls).mkdir()
        for i in range(n):
            Image.fromarray(np.stack([_face(i, 64)] * 3, -1)).save(tmp_path / cls / f"{i}.png")
    ds = load_dataset(tmp_path)
    assert len(ds) == 3 and ds.skipped_counts() == {"contempt": 3}
    assert ds.images.shape[1:] == (48, 48)


def test_missing_and_empty_sources_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        load_dataset(tmp_path / "empty")


def test_csv_with_an_unknown_usage_is_refused_not_trained_on(tmp_path: Path) -> None:
    """A row whose Usage is no FER2013 split (a "Private Test" spelling, "Test") must not land in train."""
    path = tmp_path / "fer.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["emotion", "pixels", "Usage"])
        for i, usage in enumerate(["Training", "PrivateTest", "Private Test"]):
            w.writerow([i, " ".join(map(str, _face(i).ravel())), usage])
    with pytest.raises(DatasetError, match="unknown Usage 'Private Test'"):
        load_dataset(path)
