"""training.photo_folds: the 2-fold check's folders keep every person on one side."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from training.data import load_dataset
from training.photo_crops import person_of
from training.photo_folds import fold_of, write_folds


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (48, 48), 128).save(path)


def test_folds_split_the_held_out_people_and_keep_the_training_side(tmp_path: Path) -> None:
    crops = tmp_path / "rc"
    people = [f"Person_{i}" for i in range(40)]
    for person in people[:10]:
        _png(crops / "crops" / "train" / "happy" / f"Training_{person}_0001.png")
    for person in people[10:]:
        cls = "happy" if len(person) % 2 else "neutral"
        for n in (1, 2):  # two photos of one person land in one fold
            _png(crops / "crops" / "test" / cls / f"PublicTest_{person}_000{n}.png")
            _png(crops / "heldout" / cls / f"{person}_000{n}.jpg")
    counts = write_folds(crops, tmp_path / "folds")

    folds = {fold_of(p) for p in people[10:]}
    assert folds == {"A", "B"}
    n_a = sum(2 for p in people[10:] if fold_of(p) == "A")
    assert counts["ctl"] == {"test": 60, "train": 10}
    assert counts["plusA"] == {"test": 60 - n_a, "train": 10 + n_a}
    assert counts["plusB"] == {"test": n_a, "train": 70 - n_a}
    assert counts["photosA"] == {"photos": n_a} and counts["photosB"] == {"photos": 60 - n_a}
    # the A crops train under plusA (their names make them training data) and no B person is trained on
    ds = load_dataset(tmp_path / "folds" / "plusA")
    assert ds.split_counts() == {
        "train": 10 + n_a,
        "public": 60 - n_a,
    }  # public: emotion-train validates on it
    trained = {person_of(Path(p.name.removeprefix("Training_")))
               for p in (tmp_path / "folds" / "plusA" / "train").glob("*/*")}  # fmt: skip
    validated = {person_of(Path(p.name.removeprefix("PublicTest_")))
                 for p in (tmp_path / "folds" / "plusA" / "test").glob("*/*")}  # fmt: skip
    assert not trained & validated and all(fold_of(p) == "B" for p in validated)
    photos_b = {person_of(p) for p in (tmp_path / "folds" / "photosB").glob("*/*")}
    assert not photos_b & trained
