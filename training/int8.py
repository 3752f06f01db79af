"""int8 builds of the server's networks for OpenVINO on the CPU, made offline by NNCF.

One recipe for every network the server can run in int8 (the face detector,
``training.quantize_ssd``; the emotion classifier, ``training.quantize_classifier``): convert the
torch module as the server does, NNCF post-training quantization on calibration inputs, then an
OpenVINO IR that records the key of the weights it was made from (``SOURCE_KEY``, checked by the
server's :func:`~server.pipeline.backend.read_int8` at load, so a build never runs for other
weights) and a ``.json`` beside it that says how it was made.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from server.pipeline.backend import SOURCE_KEY, convert, module_key, output_structure


def quantize_to_ir(
    module: nn.Module,
    example: torch.Tensor,
    inputs: list[np.ndarray],
    out: Path,
    about: dict[str, Any],
    **nncf_options: Any,
) -> dict[str, Any]:
    """Write ``module``'s int8 IR to ``out`` (and its ``.bin``) from calibration ``inputs`` (each one
    input batch as the network takes it) and ``out``'s ``.json`` (``about`` plus the weights' key,
    the count of inputs and the versions); returns what the ``.json`` holds. ``nncf_options`` go to
    ``nncf.quantize``."""
    import nncf
    import openvino as ov

    if not inputs:
        raise SystemExit("no calibration inputs")
    model = convert(module, example, output_structure(module, example)[0])
    quantized = nncf.quantize(model, nncf.Dataset(inputs), subset_size=len(inputs), **nncf_options)
    key = module_key(module)
    quantized.set_rt_info(key, [SOURCE_KEY])
    out.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    made = {
        **about,
        SOURCE_KEY: key,
        "calibration_inputs": len(inputs),
        "nncf": nncf.__version__,
        "openvino": ov.__version__,
    }
    out.with_suffix(".json").write_text(json.dumps(made, indent=2) + "\n")
    return made
