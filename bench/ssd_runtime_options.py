"""The SSD network (300x300, batch 1) under OpenVINO options and, with ``--int8``, quantized to int8.

What was tried for the detector's network time on the CPU, side by side in one process, options
alternating call by call (medians): the float build as the server compiles it (dynamic batch,
``LATENCY`` hint, bf16 where the CPU has it), the shipped int8 build (the server's default,
``server/checkpoints/ssd-int8``), a static batch-1 shape, CPU pinning on and off, denormals
optimisation, explicit 1 and 2 threads, f32. With ``--int8`` (needs ``pip install nncf``, which
the server does not depend on) also an NNCF post-training int8 model, calibrated on 300
realfaces-dev photos pasted into 640x480 frames, and the share of faces found by width for it and
for the server's model (``bench/smallest_face.py``'s scenes, a different photo sample).

    python bench/ssd_runtime_options.py             # ~1 min
    python bench/ssd_runtime_options.py --int8      # ~3 min
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from server.pipeline.backend import convert, output_structure, read_int8  # noqa: E402
from server.pipeline.detect import SSD_INT8, DetectorOptions, SSDFaceDetector, build_detector  # noqa: E402

LATENCY = {"PERFORMANCE_HINT": "LATENCY"}
OPTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "float build (dynamic batch, LATENCY)": ("dynamic", LATENCY),
    "static batch-1 shape": ("static", LATENCY),
    "CPU pinning off": ("dynamic", {**LATENCY, "ENABLE_CPU_PINNING": False}),
    "CPU pinning on": ("dynamic", {**LATENCY, "ENABLE_CPU_PINNING": True}),
    "denormals optimisation": ("dynamic", {**LATENCY, "CPU_DENORMALS_OPTIMIZATION": True}),
    "1 thread": ("dynamic", {**LATENCY, "INFERENCE_NUM_THREADS": 1}),
    "2 threads": ("dynamic", {**LATENCY, "INFERENCE_NUM_THREADS": 2}),
    "f32": ("dynamic", {**LATENCY, "INFERENCE_PRECISION_HINT": "f32"}),
}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--int8", action="store_true", help="also an NNCF int8 model (pip install nncf)")
    return p


def calibration(det: SSDFaceDetector, n: int = 300) -> list[np.ndarray]:
    """Detector inputs of realfaces-dev photos, each pasted at a random scale and place in a frame."""
    rng = np.random.default_rng(123)
    files = sorted((REPO.parent / "shared" / "data" / "realfaces-dev").glob("*/*.jpg"))
    background = cv2.GaussianBlur(rng.integers(60, 200, (480, 640, 3), dtype=np.uint8), (0, 0), 3)
    out = []
    for f in rng.choice(np.array(files), min(n, len(files)), replace=False):
        photo = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)
        scale = rng.uniform(0.3, 2.0)
        small = cv2.resize(photo, None, fx=scale, fy=scale)
        h, w = small.shape[:2]
        frame = background.copy()
        if h <= 480 and w <= 640:
            y, x = rng.integers(0, 480 - h + 1), rng.integers(0, 640 - w + 1)
            frame[y : y + h, x : x + w] = small
        else:
            frame = cv2.resize(photo, (640, 480))
        out.append(det.preprocess([torch.from_numpy(frame).permute(2, 0, 1)]).contiguous().numpy())
    return out


def main(argv: list[str] | None = None) -> None:
    import openvino as ov

    args = get_args_parser().parse_args(argv)
    det = build_detector("ssd", DetectorOptions(score_threshold=0.5, min_face_size=1))
    assert isinstance(det, SSDFaceDetector)
    example = det.preprocess([torch.zeros((3, 300, 300), dtype=torch.uint8)]).contiguous()
    structure, constants = output_structure(det.model, example)
    models = {shape: convert(det.model, example, structure) for shape in ("dynamic", "static")}
    models["static"].reshape([1, *example.shape[1:]])
    core = ov.Core()
    compiled = {name: core.compile_model(models[shape], "CPU", cfg) for name, (shape, cfg) in OPTIONS.items()}
    shipped = read_int8(SSD_INT8, det.model, example)
    if shipped is not None:
        compiled["shipped int8 build (the server's default)"] = core.compile_model(shipped, "CPU", LATENCY)
    if args.int8:
        import nncf

        calib = calibration(det)
        compiled["int8 (NNCF, 300 calibration frames)"] = core.compile_model(
            nncf.quantize(models["dynamic"], nncf.Dataset(calib), subset_size=len(calib)), "CPU", LATENCY
        )
    requests = {name: c.create_infer_request() for name, c in compiled.items()}
    blob = example.numpy()
    times: dict[str, list[float]] = {name: [] for name in requests}
    for i in range(args.iters + 3):
        for name, req in requests.items():
            t0 = time.perf_counter()
            req.infer({0: blob})
            if i >= 3:
                times[name].append((time.perf_counter() - t0) * 1000.0)
    base = statistics.median(times[next(iter(times))])
    print(
        f"SSD network, 300x300, batch 1; medians of {args.iters}, options alternating; "
        f"1-min load average {os.getloadavg()[0]:.1f}\n"
    )
    print("| configuration | median ms | vs float build |\n| --- | ---: | ---: |")
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t):.1f} | {statistics.median(t) / base:.2f} |")
    if not args.int8:
        return
    import smallest_face as sf

    class Network:
        def __init__(self, c: Any) -> None:
            self.request = c.create_infer_request()

        def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Any]:
            out = self.request.infer({0: np.ascontiguousarray(x.numpy())})
            return torch.from_numpy(np.array(out[0])), torch.from_numpy(np.array(out[1])), constants[0]

    widths = [32, 40, 48, 64]
    faces, source = sf.photos(sf.REALFACES, 80)
    scenes = sf.scenes(det, faces, widths, 0.5)
    print(f"\nFaces found by width ({source}, bench/smallest_face.py's scenes):\n")
    print("| model | " + " | ".join(f"{w} px" for w in widths) + " |\n| --- |" + " ---: |" * len(widths))
    for name in (next(iter(compiled)), "int8 (NNCF, 300 calibration frames)"):
        det.model = Network(compiled[name])
        rates = []
        for w in widths:
            found = 0
            for frame, box in scenes[w]:
                d = det.detect([torch.from_numpy(frame).permute(2, 0, 1)])[0]
                found += int(len(d) > 0 and bool((sf.iou(d.boxes, box) >= 0.4).any()))
            rates.append(found / max(len(scenes[w]), 1))
        print(f"| {name} | " + " | ".join(f"{r:.0%}" for r in rates) + " |")


if __name__ == "__main__":
    main()
