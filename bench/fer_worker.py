"""Runs inside the ``fer`` peer's own virtualenv (see bench/vs_fer.py); times ``FER().detect_emotions``.

Protocol on stdin/stdout, one JSON object a line: ``{"load": {name: jpeg_path}}`` once, then
``{"run": name}`` -> ``{"ms": float, "faces": int}``. Frames are decoded once (cv2, BGR, as
``fer`` expects); the timing covers ``detect_emotions(frame)`` only, as a user would call it.
"""

from __future__ import annotations

import json
import os
import sys
import time

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
        else:
            frame = frames[msg["run"]]
            t0 = time.perf_counter()
            faces = detector.detect_emotions(frame)
            reply = {"ms": (time.perf_counter() - t0) * 1000.0, "faces": len(faces)}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
