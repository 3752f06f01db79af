"""CPU inference backend: the torch modules compiled by OpenVINO, behind the same call signature.

Why: on the CPU, torch runs these small convnets (the res10 SSD, ResNet18 at 40-48 px) at
batch 1 far below what the cores can do; OpenVINO fuses conv+BN+ReLU, picks the CPU's
native instructions and, on CPUs with native bf16 (AVX512-BF16, AMX), runs convolutions in
bf16 by default. Measured numbers and the accuracy parity against the torch path are in
docs/benchmarks.md; ``tests/test_backend.py`` checks the parity on every run.

:func:`compile_module` returns a callable that replaces ``module`` where it is called
(``detector.model``, ``classifier.model``): torch tensors in, torch tensors out, the same
output structure (non-tensor outputs, like the SSD's feature-map sizes, are taken from one
torch forward at compile time: they depend only on the input size, which is fixed).
The torch module stays the reference path (``EMOTION_BACKEND=torch``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)
#: Bump when what is cached changes meaning (the wrapper, the conversion options).
IR_VERSION = 2

Backend = Literal["auto", "torch", "openvino"]
#: ``auto``: a shipped int8 build of the network where one exists (:func:`compile_module`'s ``int8``),
#: else bf16 on CPUs with native bf16, else f32; ``float``: as ``auto`` without int8; ``f32``: f32.
Precision = Literal["auto", "float", "f32"]
#: The key of the weights an int8 build was quantized from, in its ``rt_info``.
SOURCE_KEY = "emotion_service_source_key"
BACKENDS: tuple[str, ...] = ("auto", "torch", "openvino")


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def resolve_backend(backend: str, device: str | torch.device) -> str:
    """``auto``: OpenVINO on the CPU when it is installed, torch otherwise (and on every GPU)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    on_cpu = torch.device(device).type == "cpu"
    if backend == "openvino":
        if not on_cpu:
            raise ValueError("the openvino backend runs on the CPU only (device must be cpu)")
        if not openvino_available():
            raise ValueError("backend 'openvino' requested but the openvino package is not installed")
        return "openvino"
    if backend == "auto" and on_cpu and openvino_available():
        return "openvino"
    return "torch"


class OpenVINOModule:
    """A torch module compiled by OpenVINO for the CPU, with a dynamic batch dimension.

    Compiled twice: once for any batch, once for a batch of one, the common case (one REST image,
    one face), which runs ~5-8% faster with every shape known at compile time (docs/benchmarks.md).
    Not an ``nn.Module``: it has no parameters to train or move; ``eval()``/``to()`` calls are
    not expected. One infer request per calling thread and build (OpenVINO requests are not
    reentrant).
    """

    def __init__(
        self,
        module: nn.Module,
        example: torch.Tensor,
        threads: int | None = None,
        precision: Precision = "auto",
        cache_dir: str | Path | None = None,
        int8: str | Path | None = None,
    ) -> None:
        import openvino as ov

        module = module.eval()
        self._structure, self._constants = output_structure(module, example)
        converted = read_int8(int8, module, example) if int8 is not None and precision == "auto" else None
        self.int8 = converted is not None
        if converted is None:
            converted = self._converted(module, example, cache_dir)
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if precision == "f32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        core = ov.Core()
        self.compiled = core.compile_model(converted, "CPU", config)
        one = converted.clone()
        one.reshape({0: [1, *example.shape[1:]]})
        self.compiled_one = core.compile_model(one, "CPU", config)
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = "int8" if self.int8 else str(getattr(hint, "get_type_name", lambda: hint)())
        self._local = threading.local()

    def _converted(self, module: nn.Module, example: torch.Tensor, cache_dir: str | Path | None) -> Any:
        """The OpenVINO model of ``module``: converting traces it (~10 s on 2 cores), so the result is
        cached in ``cache_dir`` (``None``: not cached) under a key of the weights, the input shape and
        the OpenVINO version. The cache is an optimisation only: an unreadable or unwritable one
        costs a conversion."""
        import openvino as ov

        if cache_dir is None:
            return self._convert(module, example)
        key = hashlib.sha256(module_key(module).encode())
        key.update(
            f"{type(module).__qualname__} {tuple(example.shape[1:])} {example.dtype} {ov.__version__} "
            f"v{IR_VERSION}".encode()
        )
        cache = Path(cache_dir)
        xml = cache / f"openvino-{type(module).__name__.lower()}-{key.hexdigest()[:16]}.xml"
        if xml.is_file():
            try:
                return ov.Core().read_model(str(xml))
            except RuntimeError as exc:
                log.warning("ignoring unreadable OpenVINO cache %s: %s", xml, exc)
        converted = self._convert(module, example)
        try:
            cache.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=cache, suffix=".tmp"))
            try:
                ov.save_model(converted, str(tmp / "model.xml"), compress_to_fp16=False)
                os.replace(tmp / "model.bin", xml.with_suffix(".bin"))  # .bin first: .xml marks it complete
                os.replace(tmp / "model.xml", xml)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        except (OSError, RuntimeError) as exc:
            log.warning("could not cache the OpenVINO model in %s: %s", cache, exc)
        return converted

    def _convert(self, module: nn.Module, example: torch.Tensor) -> Any:
        return convert(module, example, self._structure)

    def _request(self, batch: int) -> Any:
        name = "one" if batch == 1 else "any"
        req = getattr(self._local, name, None)
        if req is None:
            req = (self.compiled_one if batch == 1 else self.compiled).create_infer_request()
            setattr(self._local, name, req)
        return req

    def __call__(self, x: torch.Tensor) -> Any:
        x = x.detach().cpu()
        arr = np.ascontiguousarray((x.float() if x.is_floating_point() else x).numpy())
        outputs = self._request(len(arr)).infer({0: arr}, share_inputs=True)
        tensors = [torch.from_numpy(np.array(outputs[i])) for i in range(len(outputs))]
        return _unflatten(self._structure, tensors, self._constants)


@runtime_checkable
class InputSteps(Protocol):
    """A module that is ``net`` after input steps (``blob``) which OpenVINO can run as
    preprocessing (``openvino_preprocessing`` states them on a ``PrePostProcessor``)."""

    net: nn.Module

    def blob(self, x: torch.Tensor) -> torch.Tensor: ...

    def openvino_preprocessing(self, ppp: Any) -> None: ...


def convert(module: nn.Module, example: torch.Tensor, structure: Any) -> Any:
    """The OpenVINO model of ``module``'s tensor outputs (``structure``: :func:`_flatten`'s), with
    ``example``'s shape and a dynamic batch dimension: f32 in, or what an :class:`InputSteps`
    module takes (e.g. the SSD's uint8 pixels)."""
    import openvino as ov

    if isinstance(module, InputSteps):  # a module whose first steps OpenVINO does better itself
        ppp = ov.preprocess.PrePostProcessor(convert(module.net, module.blob(example), structure))
        module.openvino_preprocessing(ppp)
        return ppp.build()
    dtype = ov.Type.u8 if example.dtype == torch.uint8 else ov.Type.f32
    with warnings.catch_warnings():  # the converter traces: tracer and deprecation warnings only
        warnings.simplefilter("ignore")
        return ov.convert_model(
            _TensorOutputs(module, structure),
            example_input=example.contiguous(),
            input=[(ov.PartialShape([-1, *example.shape[1:]]), dtype)],
        )


def output_structure(module: nn.Module, example: torch.Tensor) -> tuple[Any, list[Any]]:
    """Which of ``module``'s outputs are tensors, and the others' values (one forward)."""
    with torch.inference_mode():
        return _flatten(module(example))


def precision_of(model: Any) -> str:
    """What a model as :func:`compile_module` returned it computes in: the OpenVINO build's
    (``int8``, ``bf16``, ``f32``) or the torch module's parameter type (``float32``, ``float16``)."""
    if isinstance(model, OpenVINOModule):
        return model.precision
    first = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
    return str(first.dtype).removeprefix("torch.") if first is not None else "unknown"


def module_key(module: nn.Module) -> str:
    """A digest of the network: its weights and its repr, which holds the layer hyperparameters
    (e.g. the SSD head layout's padding) the weights alone do not (the same weights can be
    different networks)."""
    key = hashlib.sha256()
    for name, value in module.state_dict().items():
        key.update(name.encode())
        key.update(value.detach().cpu().contiguous().numpy().tobytes())
    key.update(repr(module).encode())
    return key.hexdigest()


def read_int8(path: str | Path, module: nn.Module, example: torch.Tensor) -> Any | None:
    """The int8 build of ``module`` at ``path`` (an OpenVINO IR ``.xml``), or None when it is missing,
    made for another input size (the SSD's graph changes with it: only the size quantized runs in
    int8), unreadable or made from other weights (the last two with a warning); the float build then
    runs: the speed differs, not the network."""
    import openvino as ov

    if not Path(path).is_file():
        return None
    try:
        model = ov.Core().read_model(str(path))
        made_from = model.get_rt_info([SOURCE_KEY]).astype(str) if model.has_rt_info([SOURCE_KEY]) else None
        size = list(model.input(0).get_partial_shape().get_min_shape())[1:]
    except RuntimeError as exc:
        log.warning("ignoring unreadable int8 model %s: %s", path, exc)
        return None
    if size != list(example.shape[1:]):
        return None
    if made_from != module_key(module):
        log.warning("ignoring int8 model %s: quantized from other weights than these", path)
        return None
    return model


class _TensorOutputs(nn.Module):
    """The module with only its tensor outputs, flat (what the converter can trace)."""

    def __init__(self, module: nn.Module, structure: Any) -> None:
        super().__init__()
        self.module = module
        self.structure = structure

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.module(x)
        items = out if isinstance(out, (tuple, list)) else (out,)
        return tuple(o for o in items if isinstance(o, torch.Tensor))


def _flatten(out: Any) -> tuple[Any, list[Any]]:
    """Top-level structure of a module's output: which positions are tensors, and the constants."""
    if isinstance(out, torch.Tensor):
        return "tensor", []
    if isinstance(out, (tuple, list)):
        kinds = ["tensor" if isinstance(o, torch.Tensor) else "const" for o in out]
        return (type(out), kinds), [o for o in out if not isinstance(o, torch.Tensor)]
    raise TypeError(f"unsupported module output type {type(out).__name__}")


def _unflatten(structure: Any, tensors: Sequence[torch.Tensor], constants: Sequence[Any]) -> Any:
    if structure == "tensor":
        return tensors[0]
    kind, kinds = structure
    t, c = iter(tensors), iter(constants)
    return kind(next(t) if k == "tensor" else next(c) for k in kinds)


def compile_module(
    module: nn.Module,
    example: torch.Tensor,
    backend: str,
    threads: int | None = None,
    precision: Precision = "auto",
    cache_dir: str | Path | None = None,
    int8: str | Path | None = None,
) -> Any:
    """``module`` itself for the torch backend, else its OpenVINO build (same call, same outputs).

    ``cache_dir``: where converted models are kept (the server passes ``Settings.cache_dir``,
    shared with the detector's converted weights); ``None`` converts without caching. ``int8``:
    an int8 build of this network (:func:`read_int8`), used when ``precision`` is ``auto``."""
    if backend == "torch":
        return module
    if backend != "openvino":
        raise ValueError(f"backend must be torch or openvino after resolution, not {backend!r}")
    compiled = OpenVINOModule(module, example, threads, precision, cache_dir, int8)
    log.info("%s compiled by OpenVINO (%s)", type(module).__name__, compiled.precision)
    return compiled
