"""Runs inside the ``fer`` peer's own virtualenv (bench/vs_fer.py, bench/fer_accuracy.py).

Protocol on stdin/stdout, one JSON object a line:

* ``{"load": {name: jpeg_path}}`` once, then ``{"run": name}`` -> ``{"ms": float, "faces": int}``:
  times ``FER().detect_emotions(frame)``, frames decoded once (cv2, BGR, as ``fer`` expects);
* ``{"photos": [jpeg_path, ...]}`` -> ``{"results": [{"faces": int, "label": str | None}, ...]}``:
  ``fer``'s whole pipeline on each photo as a user would run it (``cv2.imread``, then
  ``detect_emotions``); ``label`` is the top emotion of the largest face, None without a face;
* ``{"crops": npy_path}`` -> ``{"labels": [str, ...]}``: ``fer``'s classifier alone on (N, H, W)
  uint8 grey faces, prepared as ``detect_emotions`` prepares a face (resized to its 64x64 input,
  scaled to [-1, 1]).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    import cv2
    import numpy as np
    from fer.fer import FER

    detector = FER()  # default: OpenCV Haar cascade
    frames: dict[str, np.ndarray] = {}
    for line in sys.stdin:
        msg = json.loads(line)
        if "load" in msg:
            for name, path in msg["load"].items():
                frames[name] = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
            for frame in frames.values():  # warm-up: TF builds its graph on the first call
                detector.detect_emotions(frame)
            reply: dict[str, object] = {"ok": True, "fer": getattr(sys.modules["fer"], "__version__", "?")}
        elif "photos" in msg:
            reply = {"results": [whole_pipeline(detector, cv2.imread(path)) for path in msg["photos"]]}
        elif "crops" in msg:
            reply = {"labels": classify_crops(detector, np.load(msg["crops"]))}
        else:
            frame = frames[msg["run"]]
            t0 = time.perf_counter()
            faces = detector.detect_emotions(frame)
            reply = {"ms": (time.perf_counter() - t0) * 1000.0, "faces": len(faces)}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


def whole_pipeline(detector: Any, image: Any) -> dict[str, Any]:
    faces = detector.detect_emotions(image) if image is not None else []
    if not faces:
        return {"faces": 0, "label": None}
    largest = max(faces, key=lambda f: f["box"][2] * f["box"][3])
    scores = largest["emotions"]
    return {"faces": len(faces), "label": max(scores, key=scores.get)}


def classify_crops(detector: Any, faces: Any) -> list[str]:
    import cv2
    import numpy as np

    labels = detector._get_labels()
    out: list[str] = []
    for start in range(0, len(faces), 256):
        chunk = np.stack([cv2.resize(f, (64, 64)) for f in faces[start : start + 256]]).astype("float32")
        x = (chunk / 255.0 - 0.5) * 2.0
        scores = np.asarray(detector._classify_emotions(x))
        out += [labels[int(i)] for i in scores.argmax(1)]
    return out


if __name__ == "__main__":
    main()
