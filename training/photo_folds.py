"""Would more real photos help? Folders for a 2-fold check on the held-out people.

``training.photo_crops`` splits realfaces-dev by person: the fine-tunes train on one half's crops and
every real-photo number is measured on the other half. Training on all of it would leave no clean
measurement, so this asks first whether more in-domain crops move the number at all: the held-out
people are split again by person into folds A and B, and three folders are written for
``emotion-train --extra-train``:

* ``ctl``: the training people's crops (train) and all held-out crops (logged validation);
* ``plusA``: the same plus fold A's crops as training data, fold B's crops as validation;
* ``plusB``: the same with the folds swapped;

and ``photosA`` / ``photosB``: links to each fold's photos for ``emotion-eval --detect``. The same
fine-tune of the same start on ``plusA`` against ``ctl``, scored on ``photosB`` (and the swap), is
the effect of 45-50% more real-photo crops. Results: docs/model-card.md, "More real photos?".

    python -m training.photo_folds --crops runs/rc3 --out runs/folds
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from training.photo_crops import is_heldout, person_of

#: Held-out people in fold A (the rest are in B); a salt of its own, so folds cut across the first split.
FOLD_SALT = "fold"


def fold_of(person: str) -> str:
    return "A" if is_heldout(person, 0.5, salt=FOLD_SALT) else "B"


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.is_symlink():
        os.symlink(src.resolve(), dst)


def write_folds(crops: Path, out: Path) -> dict[str, dict[str, int]]:
    """The folders described above from a ``training.photo_crops`` output; counts per folder."""
    train = sorted((crops / "crops" / "train").glob("*/*.png"))
    held = sorted((crops / "crops" / "test").glob("*/*.png"))
    if not train or not held:
        raise SystemExit(
            f"{crops} has no crops/train and crops/test: run python -m training.photo_crops first"
        )
    for name, extra, val in (("ctl", None, None), ("plusA", "A", "B"), ("plusB", "B", "A")):
        for p in train:
            _link(p, out / name / "train" / p.parent.name / p.name)
        for p in held:
            fold = fold_of(person_of(Path(p.stem.removeprefix("PublicTest_"))))
            if fold == extra:  # the file name sets the split (training.data): a training name here
                name_as_train = "Training_" + p.name.removeprefix("PublicTest_")
                _link(p, out / name / "train" / p.parent.name / name_as_train)
            elif val is None or fold == val:
                _link(p, out / name / "test" / p.parent.name / p.name)
    for photo in sorted((crops / "heldout").glob("*/*")):
        _link(photo, out / f"photos{fold_of(person_of(photo))}" / photo.parent.name / photo.name)
    return {
        d.name: {s.name: len(list(s.glob("*/*"))) for s in sorted(d.iterdir()) if s.is_dir()}
        if not d.name.startswith("photos")
        else {"photos": len(list(d.glob("*/*")))}
        for d in sorted(out.iterdir())
        if d.is_dir()
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--crops", type=Path, required=True, help="a training.photo_crops --out folder")
    p.add_argument("--out", type=Path, required=True, help="output folder (keep it out of git)")
    args = p.parse_args(argv)
    for name, counts in write_folds(args.crops, args.out).items():
        print(name, counts)


if __name__ == "__main__":
    main()
