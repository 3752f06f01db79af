"""Where the milliseconds go inside the networks on the CPU: OpenVINO's per-layer counters.

The round trip's largest share is the two networks themselves ("Where the time goes (CPU)"),
so the question after the stage profile is what inside them takes the time: convolutions in the
kernels one expects (int8 / bf16 oneDNN ``brgconv``), or layout conversions, input steps and
reference kernels that a change of graph or precision could remove. This builds the server's
pipeline exactly as it runs (``build_pipeline``, default settings) with OpenVINO's performance
counters switched on, runs the one-face 640x480 frame's inputs through each compiled network
(the whole-image SSD, distilled by default, the region SSD of streams and of the distilled SSD's
doubtful faces, the classifier at batch 1), alternating network
by network as a request does, and sums each layer's time. Counters add a little time per layer,
so the wall time here is a ceiling of the server's.
Writes the "## Inside the networks (CPU)" section of docs/benchmarks.md.

    python bench/network_layers.py                 # ~30 s
    python bench/network_layers.py --iters 50 --no-write
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import collections
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch
from bench_server import machine  # bench/ is on sys.path when run as a script
from docsection import write_section

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from server.config import Settings  # noqa: E402
from server.pipeline.backend import OpenVINOModule  # noqa: E402
from server.pipeline.crop import crop_faces  # noqa: E402
from server.pipeline.decode import decode_image  # noqa: E402
from server.pipeline.detect import SSDFaceDetector  # noqa: E402
from server.pipeline.preprocess import normalize  # noqa: E402
from server.pipeline.roi import ROI_INPUT, ProposedRegions, search_regions  # noqa: E402
from server.pipeline.runner import build_pipeline  # noqa: E402

SECTION = "## Inside the networks (CPU)"
TOP_LAYERS = 5


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=200, help="timed calls per network")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.add_argument("--no-write", action="store_true")
    return p


def with_counters() -> None:
    """Every model the server compiles from here on records per-layer times."""
    import openvino as ov

    compile_model = ov.Core.compile_model

    def compile_counting(self: Any, model: Any, device: str = "CPU", config: dict | None = None) -> Any:
        return compile_model(self, model, device, {**(config or {}), "PERF_COUNT": True})

    ov.Core.compile_model = compile_counting


def network_inputs() -> dict[str, tuple[OpenVINOModule, Any]]:
    """Each compiled network and its input for the one-face frame, as the server makes them."""
    from vs_fer import frames

    pipe = build_pipeline(Settings(backend="openvino"), "cpu")
    pipe.warmup()
    image = decode_image(frames()["one face"], max_pixels=10**8).tensor
    clf = pipe.classifier
    # The whole-image pass: the distilled SSD under the default `distilled`, the SSD itself under `ssd`.
    det = pipe.detector.proposer if isinstance(pipe.detector, ProposedRegions) else pipe.detector
    region = pipe.region_detector.detector if pipe.region_detector is not None else None
    if not isinstance(det, SSDFaceDetector) or not isinstance(region, SSDFaceDetector):
        raise SystemExit(
            "an SSD whole-image pass with SSD region passes is expected (EMOTION_DETECTOR=distilled or ssd)"
        )
    box = pipe.detector.detect([image])[0].boxes[:1]
    crops = crop_faces([image], [box], clf.meta.crop, clf.input_size)
    x1, y1, x2, y2 = search_regions(box, image.shape[2], image.shape[1])[0].int().tolist()
    face_region = image[:, y1:y2, x1:x2]  # what a stream's region pass looks at
    x = normalize(crops, clf.meta.mean, clf.meta.std).contiguous(memory_format=torch.channels_last)
    named = {
        f"{'distilled ' if det is not pipe.detector else ''}SSD whole image "
        f"{det.input_size[0]}x{det.input_size[1]}": (det.model, det.preprocess([image])),
        f"SSD region {ROI_INPUT[0]}x{ROI_INPUT[1]}": (region.model, region.preprocess([face_region])),
        f"classifier {clf.meta.stem} @ {clf.input_size}, batch 1": (clf.model, x),
    }
    nets: dict[str, tuple[OpenVINOModule, Any]] = {}
    for name, (model, inputs) in named.items():
        if not isinstance(model, OpenVINOModule):
            raise SystemExit(f"{name} does not run on OpenVINO here: nothing to count")
        nets[f"{name} ({model.precision})"] = (model, inputs.contiguous().numpy())
    return nets


def measure(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    with_counters()
    nets = network_inputs()
    # batch-1 inputs: the build the server runs for them (OpenVINOModule.compiled_one)
    requests = {name: model.compiled_one.create_infer_request() for name, (model, _) in nets.items()}
    wall: dict[str, list[float]] = collections.defaultdict(list)
    kinds: dict[str, collections.Counter[tuple[str, ...]]] = collections.defaultdict(collections.Counter)
    layers: dict[str, collections.Counter[tuple[str, ...]]] = collections.defaultdict(collections.Counter)
    for i in range(args.warmup + args.iters):
        for name, (_, x) in nets.items():  # alternating, as one request runs them
            req = requests[name]
            t0 = time.perf_counter()
            req.infer({0: x})
            dt = (time.perf_counter() - t0) * 1000.0
            if i < args.warmup:
                continue
            wall[name].append(dt)
            for p in req.profiling_info:
                if p.status.name != "EXECUTED":
                    continue
                ms = p.real_time.total_seconds() * 1000.0
                kinds[name][(p.node_type, p.exec_type)] += ms
                layers[name][(p.node_name, p.node_type, p.exec_type)] += ms
    out = {}
    for name, (model, _) in nets.items():
        n = len(wall[name])
        names = layer_names(model)
        out[name] = {
            "wall_ms": sorted(wall[name])[n // 2],
            "kinds": {k: v / n for k, v in kinds[name].most_common()},
            "layers": {
                (names.get(k[0], short(k[0])), *k[1:]): v / n for k, v in layers[name].most_common(TOP_LAYERS)
            },
        }
    return out


def short(layer: str) -> str:
    """``__module.module.block128.conv2/aten::_convolution/Convolution`` -> ``block128.conv2``."""
    return layer.removeprefix("__module.").removeprefix("module.").split("/")[0]


def layer_names(model: OpenVINOModule) -> dict[str, str]:
    """Each executed layer's name in terms of the torch module: OpenVINO renames fused layers
    (a convolution with its batch norm becomes ``Multiply_5561``); the first torch layer it was
    made from names it instead: ``layer4.1.conv2+bn2`` (the norm folded into the convolution)."""
    names = {}
    for op in model.compiled_one.get_runtime_model().get_ops():
        made_from = op.get_rt_info()["originalLayersNames"].astype(str).split(",")
        torch_layers = [short(n) for n in made_from if "/aten::" in n]
        name = torch_layers[0] if torch_layers else short(op.get_friendly_name())
        names[op.get_friendly_name()] = re.sub(r"\.bn(\d+)$", r".conv\1+bn\1", name)
    return names


def report(res: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    parts = [
        f"{SECTION}\n",
        "The server's compiled networks (`build_pipeline`, default settings) with OpenVINO's per-layer "
        f"counters on, the one-face 640x480 frame's inputs, {args.iters} calls each, networks alternating "
        "as in a request; medians of wall time per call (the counters add a little to it) and the mean "
        "time per call of each kind of layer (OpenVINO's layer type and the kernel that ran it).\n",
    ]
    for name, r in res.items():
        total = sum(r["kinds"].values())
        conv = sum(v for (t, _), v in r["kinds"].items() if t == "Convolution")
        parts.append(
            f"**{name}**: {r['wall_ms']:.2f} ms per call, layers {total:.2f} ms, of which convolutions "
            f"{conv:.2f} ms ({conv / total:.0%}).\n"
        )
        rows = ["| layer type | kernel | ms per call | share |", "| --- | --- | ---: | ---: |"]
        rest = 0.0
        for (t, e), v in r["kinds"].items():
            if v / total >= 0.02:
                rows.append(f"| {t} | `{e}` | {v:.3f} | {v / total:.0%} |")
            else:
                rest += v
        rows.append(f"| (the others) | | {rest:.3f} | {rest / total:.0%} |")
        top = ", ".join(f"`{n}` {v:.2f} ms ({e})" for (n, _, e), v in r["layers"].items())
        parts.append("\n".join(rows) + f"\n\nLargest layers: {top}.\n")
    cmd = ("python bench/network_layers.py " + " ".join(sys.argv[1:])).strip()
    parts.append(f"Machine: {machine()}.\n\nReproduce: `{cmd}`\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    body = report(measure(args), args)
    print(body)
    if not args.no_write:
        write_section(args.out, SECTION, body)


if __name__ == "__main__":
    main()
