"""Where a frame's milliseconds go on the CPU, stage by stage, for each model backend.

In process, on the server's own pipeline objects (``server.pipeline.runner.build_pipeline``): JPEG
decode, detector preprocessing (resize to the SSD input), the SSD network, the whole detect
step (network + box decoding + NMS), the face crop, the classifier, and the whole batch
(``Pipeline.run``: detect -> crop -> classify). Backends alternate call by call. HTTP and
JSON are what ``bench/vs_fer.py``'s round trip adds on top of the server's own total.
Writes the "## Where the time goes (CPU)" section of docs/benchmarks.md.

    python bench/stages.py                       # ~1 min
    python bench/stages.py --iters 20 --no-write
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from docsection import write_section  # bench/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from server.api.options import default_options  # noqa: E402
from server.config import Settings  # noqa: E402
from server.pipeline.crop import crop_faces  # noqa: E402
from server.pipeline.decode import decode_image  # noqa: E402
from server.pipeline.roi import ProposedRegions  # noqa: E402
from server.pipeline.runner import Job, build_pipeline  # noqa: E402

SECTION = "## Where the time goes (CPU)"
STAGES = ("decode", "detect: resize", "detect: network", "detect: whole step", "crop", "classify", "batch")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default="torch,openvino")
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.add_argument("--no-write", action="store_true")
    return p


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    from vs_fer import frames

    jpeg = frames()["one face"]
    backends = args.backends.split(",")
    pipes = {b: build_pipeline(Settings(backend=b), "cpu") for b in backends}
    for p in pipes.values():
        p.warmup()
    image = decode_image(jpeg, max_pixels=10**8)
    options = default_options(Settings())  # once: building Settings takes ~1.7 ms
    img = image.tensor
    times: dict[tuple[str, str], list[float]] = {}

    def timed(key: tuple[str, str], fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = fn()
        times.setdefault(key, []).append((time.perf_counter() - t0) * 1000.0)
        return out

    with torch.inference_mode():
        for _ in range(args.iters):
            for b, p in pipes.items():
                det, clf = p.detector, p.classifier
                # The whole-image network: the distilled SSD under the default `distilled`.
                whole = det.proposer if isinstance(det, ProposedRegions) else det
                timed((b, "decode"), lambda: decode_image(jpeg, max_pixels=10**8))
                blob = timed((b, "detect: resize"), lambda whole=whole: whole.preprocess([img]))
                timed((b, "detect: network"), lambda whole=whole, blob=blob: whole.model(blob))
                d = timed((b, "detect: whole step"), lambda det=det: det.detect([img]))[0]
                crops = timed(
                    (b, "crop"),
                    lambda clf=clf, d=d: crop_faces([img], [d.boxes], clf.meta.crop, clf.input_size),
                )
                timed((b, "classify"), lambda clf=clf, crops=crops: clf.predict(crops))
                timed((b, "batch"), lambda p=p: p.run([Job(image, options)]))
    med = {k: statistics.median(v) for k, v in times.items()}
    lines = [
        "| stage | " + " | ".join(f"{b} ms" for b in backends) + " |",
        "| --- |" + " ---: |" * len(backends),
    ]
    for stage in STAGES:
        lines.append(f"| {stage} | " + " | ".join(f"{med[(b, stage)]:.1f}" for b in backends) + " |")
    load = os.getloadavg()[0]
    cmd = ("python bench/stages.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    body = (
        f"{SECTION}\n\nOne 640x480 JPEG with one face (`bench/vs_fer.py`'s frame), in process on the "
        "server's pipeline objects, default settings, medians of "
        f"{args.iters} with the backends alternating; 1-min load average {load:.1f} at the end. "
        "`batch` is `Pipeline.run` (detect + crop + classify, what the server's `detect` and `classify` "
        "timings add up to); decode runs before it on the decode pool; HTTP and JSON are the rest of the "
        'round trip in "Versus fer (CPU)".\n\n' + "\n".join(lines) + f"\n\nReproduce: `{cmd}`\n"
    )
    print(body)
    if not args.no_write:
        write_section(args.out, SECTION, body)


if __name__ == "__main__":
    main()
