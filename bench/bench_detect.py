"""Face-detector throughput: the batched torch SSD against cv2.dnn on 640x480 frames.

Times the whole detection step from decoded frames to boxes in frame pixels:
torch = ``SSDFaceDetector.detect`` (resize, network, NMS, scaling); cv2 =
``blobFromImages`` + ``net.forward()`` (OpenCV runs the batch as one blob) + the usual
threshold and scaling. Medians over iterations; torch and cv2 iterations alternate so
background load hits both alike. Writes the "## Face detection" section of
docs/benchmarks.md.

    python bench/bench_detect.py                      # CPU (and CUDA if present), ~1-2 min
    python bench/bench_detect.py --frames 16 --threads 2 --no-write
"""

from __future__ import annotations

import os

# Before torch loads its OpenMP runtime: idle OpenMP threads otherwise spin, which on a
# shared or small CPU steals the cores from everything else (cv2.dnn here included) and
# made torch 10x slower at 2 threads on the 2-core test machine. See docs/detection.md.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from docsection import write_section  # bench/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from server.pipeline.detect import DetectorOptions, build_detector, locate_weights  # noqa: E402

SECTION = "## Face detection"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", default="1,8,64", help="comma-separated batch sizes")
    p.add_argument("--input-sizes", default="300x300,160x120", help="SSD input WxH list")
    p.add_argument("--threads", default="2", help="CPU thread counts to test, e.g. 1,2")
    p.add_argument("--frames", type=int, default=32, help="frames per measurement (>= 3 iterations)")
    p.add_argument("--devices", default="auto", help="'auto' = cpu (+ cuda if available), or a list")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument(
        "--parity", action="store_true", help="instead of timing, compare torch and cv2.dnn outputs on photos"
    )
    return p


def frame() -> np.ndarray:
    """A 640x480 RGB frame with three faces (scikit-image's astronaut) on a textured background."""
    from skimage import data

    face = data.astronaut()[20:220, 140:320]
    rng = np.random.default_rng(0)
    out = cv2.GaussianBlur(rng.integers(60, 200, (480, 640, 3), dtype=np.uint8), (0, 0), 3)
    for x, y, s in ((20, 40, 1.0), (250, 150, 0.7), (450, 60, 0.9)):
        f = cv2.resize(face, None, fx=s, fy=s)
        out[y : y + f.shape[0], x : x + f.shape[1]] = f
    return out


def median_ms(fns: dict[str, Callable[[], object]], iters: int) -> dict[str, float]:
    for fn in fns.values():
        fn()  # warm-up: allocations, prior boxes, lazy init
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) * 1000.0)
    return {k: statistics.median(v) for k, v in times.items()}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parity_photos() -> dict[str, np.ndarray]:
    """scikit-image's astronaut: as is, on a canvas with three faces, scaled, rotated, odd-sized."""
    from skimage import data

    astro = data.astronaut()
    canvas = np.full((480, 640, 3), 90, np.uint8)
    for x, y, s in ((20, 40, 1.0), (250, 150, 0.7), (450, 60, 0.9)):
        f = cv2.resize(astro[20:220, 140:320], None, fx=s, fy=s)
        canvas[y : y + f.shape[0], x : x + f.shape[1]] = f

    def rotate(img: np.ndarray, deg: float) -> np.ndarray:
        m = cv2.getRotationMatrix2D((img.shape[1] / 2, img.shape[0] / 2), deg, 1.0)
        return cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), borderMode=cv2.BORDER_REFLECT)

    return {
        "astronaut": astro,
        "canvas": canvas,
        "canvas 320x240": cv2.resize(canvas, (320, 240)),
        "1280x960": cv2.resize(astro, (1280, 960)),
        "200x150": cv2.resize(astro, (200, 150)),
        "rot +15": rotate(astro, 15),
        "rot -30": rotate(astro, -30),
        "333x517": cv2.resize(astro, (333, 517)),
        "frame": frame(),
    }


def parity(threshold: float = 0.05) -> None:
    """Every detection above ``threshold`` (weak ones too), torch vs cv2.dnn, both input sizes."""
    import tempfile

    from server.pipeline.boxes import box_iou
    from server.pipeline.detect import SSDFaceDetector
    from server.pipeline.detect.layouts import prototxt_for_layout

    files = locate_weights()
    worst_iou, worst_score, total = 1.0, 0.0, 0
    # The trained layout is compared with cv2.dnn running the prototxt with the same padding;
    # at 160x120 that net has an empty conv8_2 map, which cv2.dnn refuses to run.
    cases = (("trained", (300, 300)), ("deploy", (300, 300)), ("deploy", (160, 120)))
    for layout, size in cases:
        with tempfile.NamedTemporaryFile("w", suffix=".prototxt") as proto:
            proto.write(prototxt_for_layout(files.prototxt.read_text(), layout))
            proto.flush()
            net = cv2.dnn.readNetFromCaffe(proto.name, str(files.caffemodel))
        options = DetectorOptions(score_threshold=threshold, max_faces=1000, min_face_size=0, input_size=size)
        det = SSDFaceDetector(files, options, layout=layout)
        for name, rgb in parity_photos().items():
            h, w = rgb.shape[:2]
            net.setInput(
                cv2.dnn.blobFromImage(np.ascontiguousarray(rgb[..., ::-1]), 1.0, size, (104.0, 177.0, 123.0))
            )
            out = net.forward()[0, 0]
            out = out[out[:, 2] > threshold]
            ref = torch.from_numpy(np.clip(out[:, 3:7] * [w, h, w, h], 0, [w, h, w, h]).astype(np.float32))
            keep = torch.minimum(ref[:, 2] - ref[:, 0], ref[:, 3] - ref[:, 1]) > 0
            ref, ref_scores = ref[keep], torch.from_numpy(out[:, 2].copy())[keep]
            (ours,) = det.detect([torch.from_numpy(rgb).permute(2, 0, 1)])
            if len(ours) != len(ref):
                print(f"{layout} {size} {name}: {len(ours)} torch vs {len(ref)} cv2 detections")
                worst_iou = 0.0
                continue
            if not len(ref):
                continue
            best = box_iou(ref, ours.boxes).max(1)
            iou, dscore = (
                float(best.values.min()),
                float((ref_scores - ours.scores[best.indices]).abs().max()),
            )
            worst_iou, worst_score, total = min(worst_iou, iou), max(worst_score, dscore), total + len(ref)
            print(
                f"{layout:7s} input {size[0]}x{size[1]} {name:15s} {len(ref):4d} detections  "
                f"min IoU {iou:.6f}  max |dscore| {dscore:.1e}"
            )
    print(
        f"all {total} detections > {threshold}: "
        f"min IoU {worst_iou:.6f}, max |score difference| {worst_score:.1e}"
    )


def measure(
    device: str, size: tuple[int, int], batch: int, frames: int, rgb: np.ndarray, net: cv2.dnn.Net
) -> dict[str, float]:
    """Median ms per batch of each implementation for one configuration."""
    w, h = size
    det = build_detector(options=DetectorOptions(input_size=size), device=device)
    # Laid out like server.pipeline.decode output: a (3, H, W) view of an HWC array.
    images = [torch.from_numpy(rgb).permute(2, 0, 1).to(device)] * batch
    bgr = [np.ascontiguousarray(rgb[..., ::-1])] * batch
    frame_h, frame_w = rgb.shape[:2]
    scale = np.array([frame_w, frame_h, frame_w, frame_h], np.float32)

    def torch_detect() -> None:
        det.detect(images)
        if device == "cuda":
            torch.cuda.synchronize()

    def cv2_detect() -> None:
        net.setInput(cv2.dnn.blobFromImages(bgr, 1.0, (w, h), (104.0, 177.0, 123.0)))
        out = net.forward()[0, 0]
        out = out[out[:, 2] > 0.5]
        np.clip(out[:, 3:7] * scale, 0, scale)

    fns: dict[str, Callable[[], object]] = {"torch": torch_detect}
    if device == "cpu":  # opencv-python has no CUDA backend
        fns["cv2.dnn"] = cv2_detect
    return median_ms(fns, max(3, math.ceil(frames / batch)))


def run(args: argparse.Namespace) -> tuple[list[dict[str, object]], str]:
    batches = [int(b) for b in args.batches.split(",")]
    sizes = [(int(s.split("x")[0]), int(s.split("x")[1])) for s in args.input_sizes.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    if args.devices == "auto":
        devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    else:
        devices = args.devices.split(",")
    rgb = frame()
    files = locate_weights()
    net = cv2.dnn.readNetFromCaffe(str(files.prototxt), str(files.caffemodel))
    rows: list[dict[str, object]] = []
    load_before = os.getloadavg()[0]
    for device in devices:
        for n_threads in threads if device == "cpu" else [threads[-1]]:
            torch.set_num_threads(n_threads)
            cv2.setNumThreads(n_threads)
            for w, h in sizes:
                for b in batches:
                    for impl, ms in measure(device, (w, h), b, args.frames, rgb, net).items():
                        row: dict[str, object] = {
                            "device": device,
                            "threads": n_threads if device == "cpu" else "-",
                            "impl": impl,
                            "input": f"{w}x{h}",
                            "batch": b,
                            "ms_frame": ms / b,
                            "fps": 1000.0 * b / ms,
                        }
                        rows.append(row)
                        print(
                            f"{device} threads={row['threads']} {impl:8s} input {w}x{h} batch {b:3d}: "
                            f"{ms / b:7.2f} ms/frame {1000.0 * b / ms:7.1f} frames/s",
                            flush=True,
                        )
    load_after = os.getloadavg()[0]
    machine = (
        f"{cpu_name()}, {os.cpu_count()} logical CPUs"
        + (f"; GPU {torch.cuda.get_device_name(0)}" if "cuda" in devices else "")
        + f"; torch {torch.__version__}, OpenCV {cv2.__version__}; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')}; "
        f"1-min load average {load_before:.1f} before / {load_after:.1f} after the run"
    )
    return rows, machine


def table(rows: list[dict[str, object]]) -> str:
    lines = [
        "| device | threads | input | batch | torch ms/frame | torch frames/s "
        "| cv2.dnn ms/frame | cv2.dnn frames/s |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    keyed: dict[tuple[object, ...], dict[str, dict[str, object]]] = {}
    for r in rows:
        keyed.setdefault((r["device"], r["threads"], r["input"], r["batch"]), {})[str(r["impl"])] = r
    for (device, threads, size, batch), impls in keyed.items():
        t, c = impls.get("torch"), impls.get("cv2.dnn")
        cells = [
            f"{t['ms_frame']:.1f}" if t else "-",
            f"{t['fps']:.1f}" if t else "-",
            f"{c['ms_frame']:.1f}" if c else "-",
            f"{c['fps']:.1f}" if c else "-",
        ]
        lines.append(f"| {device} | {threads} | {size} | {batch} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    if args.parity:
        parity()
        return
    rows, machine = run(args)
    md = table(rows)
    print("\n" + md + "\n\n" + machine)
    if args.no_write:
        return
    cmd = "python bench/bench_detect.py " + " ".join(argv if argv is not None else sys.argv[1:])
    body = (
        f"{SECTION}\n\n"
        "Whole detection step on a 640x480 frame with three faces, decoded frame in, boxes in frame "
        "pixels out: torch = `SSDFaceDetector.detect` (bit-exact OpenCV resize, network, batched NMS); "
        "cv2.dnn = `blobFromImages` + one `forward()` for the batch + threshold/scaling. The input "
        "column is the network input (WxH) every frame is resized to. Medians; torch and cv2 "
        "iterations alternate.\n\n"
        f"{md}\n\n"
        f"Machine: {machine}.\n\n"
        + (
            "The machine was busy during this run (load average above its CPU count), so absolute "
            "numbers are pessimistic and more threads gain little; the torch/cv2.dnn ratio is the "
            "meaningful part.\n\n"
            if os.getloadavg()[0] > (os.cpu_count() or 1)
            else ""
        )
        + f"Reproduce: `{cmd.strip()}`\n"
    )
    write_section(args.out, SECTION, body)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
