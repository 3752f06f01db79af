"""Server configuration: one typed object read from ``EMOTION_*`` environment variables.

Everything is validated when :class:`Settings` is built, so a bad deployment (a
missing checkpoint, a placeholder API key, a CUDA device on a CPU host) fails at
startup with a clear message instead of at the first request.
"""

from __future__ import annotations

import os
import re
import ssl
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from server.device import resolve_device
from server.model.checkpoint import DEFAULT_CHECKPOINT
from server.pipeline.detect.options import DetectorChoice, DetectorOptions
from server.pipeline.detect.weights import DISTILLED_SSD

MiB = 1024 * 1024
#: Keys that show up in copy-pasted examples; refusing them beats shipping them.
PLACEHOLDER_KEYS = frozenset({"changeme", "changethis", "password", "secret", "apikey", "api_key", "example"})
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _split_csv(value: object) -> object:
    """``"a, b"`` -> ``["a", "b"]``; lists (from code or JSON) pass through."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def default_cache_dir() -> Path:
    """Where converted models are kept when ``EMOTION_CACHE_DIR`` is unset: the user's cache folder."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "emotion-service"


def parse_size(text: str) -> tuple[int, int]:
    """``"320x240"`` -> (320, 240), ``"300"`` -> (300, 300): an input size as settings and commands
    take it."""
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"expected WxH or one side, e.g. 300 or 320x240, not {text!r}")
    return (int(parts[0]), int(parts[1]))


class Settings(BaseSettings):
    """Every knob of the server; ``emotion-server`` flags override the environment."""

    model_config = SettingsConfigDict(env_prefix="EMOTION_", extra="ignore", validate_default=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    root_path: str = Field(
        default="",
        pattern=r"^(/[^/?#\s]+)*$",
        description="the path prefix a reverse proxy serves the server under and strips (e.g. /emotion), "
        "so /docs and /redoc load their assets and API description from under it; default none",
    )
    device: str = Field(
        default="auto", description="auto (CUDA when available, else CPU), cpu, cuda, cuda:N, mps"
    )
    checkpoint: Path = DEFAULT_CHECKPOINT

    detector: DetectorChoice = Field(
        default="distilled",
        description="distilled (a half-width SSD distilled from the res10 SSD finds the faces; the "
        "res10 SSD confirms and frames those it is unsure of), ssd (the res10 SSD over the whole image), "
        "blazeface (CPU with OpenVINO: BlazeFace proposes, the SSD confirms and frames), haar, or "
        "auto (blazeface where OpenVINO runs the models, else ssd).",
    )
    detector_input_size: Annotated[tuple[int, int], NoDecode] = Field(
        default=(300, 300),
        description="SSD network input, WxH or one side: 300, 320x240, 160x120 (blazeface's are fixed).",
    )
    distilled_weights: Path = Field(
        default=DISTILLED_SSD,
        description="The distilled SSD of EMOTION_DETECTOR=distilled (the default): the shipped "
        "half-width one, or a file written by python -m training.distill_ssd.",
    )
    score_threshold: float = Field(default=0.5, ge=0.0, le=1.0, description="Default minimum detector score.")
    max_faces: int = Field(
        default=10, ge=1, le=100, description="Default and upper bound of faces per image."
    )
    min_face_size: int = Field(default=20, ge=1, description="Smaller detections (pixels) are discarded.")

    max_batch_size: int = Field(default=16, ge=1, le=512)
    max_wait_ms: float = Field(
        default=2.0, ge=0.0, le=1000.0, description="How long a batch waits to fill up."
    )
    max_queue: int = Field(
        default=256, ge=1, description="Images waiting for the model before requests get 503."
    )
    decode_threads: int = Field(default_factory=lambda: min(4, os.cpu_count() or 1), ge=1, le=64)
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="torch and OpenVINO threads; default: their own, except torch's 1 where OpenVINO runs "
        "both networks (the server).",
    )
    backend: Literal["auto", "torch", "openvino"] = Field(
        default="auto",
        description="Model runtime on the CPU: auto (OpenVINO when installed), torch (the reference path), "
        "openvino. GPUs always run torch.",
    )
    cpu_precision: Literal["auto", "float", "f32"] = Field(
        default="auto",
        description=(
            "OpenVINO precision: auto (the face detector's shipped int8 build; bf16 on CPUs with native "
            "bf16, else f32), float (auto without int8) or f32."
        ),
    )
    flip_tta: bool | Literal["auto"] = Field(
        default="auto",
        description="Average each face's probabilities with its mirror image's (2x classify): +0.3 points "
        "on FER2013 PrivateTest, none on held-out real photos (bundled model). auto: on a GPU, where the "
        "second pass is nearly free; off on a CPU, where it adds ~1.5 ms per face (int8) to a ~15 ms "
        "request.",
    )
    prior_shift: bool = Field(
        default=True,
        description="Apply the checkpoint's prior shift to the scores (the bundled model's moves them toward "
        "real photos' class frequencies: +1.5 points on held-out real photos, -0.1 on FER2013 PrivateTest; "
        "docs/model-card.md 'What a score means'); false: the network's own scores.",
    )
    warmup: bool = True
    cache_dir: Path = Field(
        default_factory=default_cache_dir,
        description="Converted models (detector weights, OpenVINO builds); default "
        "$XDG_CACHE_HOME/emotion-service or ~/.cache/emotion-service.",
    )

    max_body_bytes: int = Field(default=10 * MiB, ge=1024)
    max_pixels: int = Field(default=40_000_000, ge=64 * 64)
    header_timeout_s: float = Field(
        default=10.0, gt=0.0, le=3600.0, description="Time a client has to send a request line and headers."
    )
    body_timeout_s: float = Field(
        default=30.0, gt=0.0, le=3600.0, description="Time a client has to send a whole request body (408)."
    )

    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins whose pages may call the API and open streams (besides the server's own).",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names (or *.domain) the server answers to; empty: any. Probes answer any.",
    )

    max_streams: int = Field(default=16, ge=1, le=10_000)
    max_streams_per_client: int = Field(
        default=0, ge=0, le=10_000, description="Streams one API key (else one address) may hold; 0: no cap."
    )
    stream_max_fps: float = Field(default=30.0, gt=0.0, le=1000.0)
    stream_redetect_every: int = Field(
        default=10,
        ge=0,
        le=1000,
        description="Streams: detect the whole frame every N frames and, in between, only around the "
        "previous frame's faces (a new face is found within N frames); 0 or 1: always the whole frame.",
    )
    stream_idle_timeout_s: float = Field(
        default=60.0,
        ge=0.0,
        le=86400.0,
        description="A stream with no frame this long is closed (4408); 0: never.",
    )
    shutdown_timeout_s: float = Field(
        default=10.0, ge=0.0, le=3600.0, description="Grace period for in-flight work on shutdown."
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    # --- TLS: HTTPS/WSS served by uvicorn itself (browsers give the camera only to HTTPS or localhost
    # pages, so a remote browser needs this or a TLS reverse proxy; README "HTTPS for remote cameras").
    ssl_certfile: Path | None = Field(
        default=None, description="PEM certificate (full chain); with ssl_keyfile: HTTPS and WSS."
    )
    ssl_keyfile: Path | None = Field(default=None, description="PEM private key of ssl_certfile.")
    ssl_keyfile_password: SecretStr | None = Field(default=None, description="Password of an encrypted key.")

    @field_validator("ssl_certfile", "ssl_keyfile", "ssl_keyfile_password", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """``EMOTION_SSL_CERTFILE=`` (compose passes unset variables as empty) means no TLS."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("root_path", mode="before")
    @classmethod
    def _root_path_without_trailing_slash(cls, value: object) -> object:
        """``/emotion/`` is ``/emotion``; ``/`` is none."""
        return value.strip().rstrip("/") if isinstance(value, str) else value

    @field_validator("cache_dir", mode="before")
    @classmethod
    def _empty_cache_is_default(cls, value: object) -> object:
        """``EMOTION_CACHE_DIR=`` means the default folder, as it always has."""
        return default_cache_dir() if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _tls_pair_loads(self) -> Settings:
        """Both files or neither, and they must load as a pair: a typo fails at startup, not per client."""
        cert, key = self.ssl_certfile, self.ssl_keyfile
        if cert is None and key is None:
            return self
        if cert is None or key is None:
            raise ValueError("TLS needs both ssl_certfile and ssl_keyfile (EMOTION_SSL_CERTFILE/KEYFILE)")
        for name, path in (("ssl_certfile", cert), ("ssl_keyfile", key)):
            if not path.is_file():
                raise ValueError(f"{name} {path} does not exist")
        password = self.ssl_keyfile_password.get_secret_value() if self.ssl_keyfile_password else None
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"cannot load TLS certificate {cert} with key {key}: {exc}") from None
        return self

    @property
    def tls_enabled(self) -> bool:
        return self.ssl_certfile is not None

    # --- end TLS

    _split = field_validator("api_keys", "cors_origins", "allowed_hosts", mode="before")(_split_csv)

    @field_validator("detector_input_size", mode="before")
    @classmethod
    def _size(cls, value: object) -> object:
        """``300`` -> (300, 300); ``"320x240"`` -> (320, 240)."""
        if isinstance(value, int):
            return (value, value)
        return parse_size(value) if isinstance(value, str) else value

    @field_validator("detector_input_size")
    @classmethod
    def _size_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not all(32 <= side <= 2048 for side in value):
            raise ValueError("detector input sides must be within 32..2048 pixels")
        return value

    @model_validator(mode="after")
    def _distilled_exists(self) -> Settings:
        """Checked only where it is used: a server on another detector does not need the file."""
        if self.detector == "distilled" and not self.distilled_weights.is_file():
            raise ValueError(
                f"distilled SSD weights {self.distilled_weights} do not exist (EMOTION_DISTILLED_WEIGHTS)"
            )
        return self

    @field_validator("backend", "cpu_precision", mode="before")
    @classmethod
    def _lower_choice(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("device")
    @classmethod
    def _device_syntax(cls, value: str) -> str:
        value = value.strip().lower()
        if not _DEVICE.match(value):
            raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, not {value!r}")
        resolve_device(value)
        return value

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint_exists(cls, value: Path) -> Path:
        if not value.is_file():
            raise ValueError(
                f"checkpoint {value} does not exist (server: EMOTION_CHECKPOINT or --checkpoint; "
                "EmotionAnalyzer: its checkpoint argument)"
            )
        return value

    @field_validator("api_keys")
    @classmethod
    def _real_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        for secret in keys:
            key = secret.get_secret_value()
            if key.lower() in PLACEHOLDER_KEYS or len(key) < 8 or any(c.isspace() for c in key):
                # The key itself is never echoed: error messages end up in logs.
                raise ValueError(
                    "every API key needs 8+ characters, no spaces, and must not be a placeholder"
                )
        return keys

    def detector_options(self) -> DetectorOptions:
        """The detector's knobs from these settings (``build_detector``'s ``options``)."""
        return DetectorOptions(
            score_threshold=self.score_threshold,
            max_faces=self.max_faces,
            min_face_size=self.min_face_size,
            input_size=self.detector_input_size,
        )

    def flip_tta_on(self, device: str) -> bool:
        """``flip_tta`` on ``device`` (a resolved device string), ``auto`` decided."""
        return device != "cpu" if self.flip_tta == "auto" else self.flip_tta

    def torch_device(self) -> str:
        """The concrete device string (``auto`` resolved)."""
        return resolve_device(self.device)

    def key_values(self) -> list[str]:
        return [key.get_secret_value() for key in self.api_keys]

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    def limits(self) -> dict[str, float | int]:
        """What clients may send, as reported by ``GET /v1/info``."""
        return {
            "max_body_bytes": self.max_body_bytes,
            "max_pixels": self.max_pixels,
            "max_faces": self.max_faces,
            "max_batch_size": self.max_batch_size,
            "max_wait_ms": self.max_wait_ms,
            "max_streams": self.max_streams,
            "max_streams_per_client": self.max_streams_per_client,
            "stream_max_fps": self.stream_max_fps,
            "stream_idle_timeout_s": self.stream_idle_timeout_s,
            "header_timeout_s": self.header_timeout_s,
            "body_timeout_s": self.body_timeout_s,
        }
