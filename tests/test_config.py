"""server.config: settings from the environment and flags, refused at startup when wrong; server.device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from server.cli import load_settings, main
from server.config import Settings
from server.device import resolve_device


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tiny_checkpoint: Path) -> None:
    monkeypatch.setenv("EMOTION_CHECKPOINT", str(tiny_checkpoint))
    monkeypatch.setenv("EMOTION_API_KEYS", "first-key-123, second-key-456")
    monkeypatch.setenv("EMOTION_CORS_ORIGINS", "http://a.example,http://b.example")
    monkeypatch.setenv("EMOTION_MAX_WAIT_MS", "7.5")
    s = Settings()
    assert s.key_values() == ["first-key-123", "second-key-456"]
    assert s.cors_origins == ["http://a.example", "http://b.example"] and s.max_wait_ms == 7.5
    assert "first-key-123" not in repr(s)
    assert s.max_body_bytes == 10 * 1024 * 1024 and s.max_pixels == 40_000_000
    assert s.torch_device() == "cpu" or s.torch_device().startswith("cuda")
    flags = load_settings(["--port", "9001", "--device", "cpu", "--max-batch-size", "4"])
    assert (flags.port, flags.device, flags.max_batch_size, flags.max_wait_ms) == (9001, "cpu", 4, 7.5)


@pytest.mark.parametrize(
    "bad",
    [
        {"checkpoint": "/nonexistent.safetensors"},
        {"device": "tpu"},
        {"max_batch_size": 0},
        {"api_keys": "changeme"},
        {"api_keys": "short"},
        {"detector": "yolo"},
        {"stream_max_fps": 0},
        {"root_path": "emotion"},  # a path prefix starts with /
        {"shutdown_timeout_s": "inf"},  # would wait forever on SIGTERM
        {"root_path": "/a b"},
    ],
)
def test_bad_settings_fail_at_startup(tiny_checkpoint: Path, bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Settings(**{"checkpoint": tiny_checkpoint, **bad})


def test_cli_reports_bad_config_without_echoing_keys(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EMOTION_API_KEYS", "tiny")
    assert main(["--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "api_keys" in err and "tiny" not in err


def test_lists_sizes_and_choices_are_parsed_leniently(tiny_checkpoint: Path) -> None:
    s = Settings(
        checkpoint=tiny_checkpoint,
        detector_input_size="320 x 240",
        allowed_hosts="a.example, *.b.example,",
        backend=" Torch ",
        log_level="DEBUG",
        ssl_certfile="",  # compose passes unset variables as empty: no TLS
        device=" CPU ",
    )
    assert s.detector_input_size == (320, 240) and s.allowed_hosts == ["a.example", "*.b.example"]
    assert (s.backend, s.log_level, s.device, s.tls_enabled) == ("torch", "debug", "cpu", False)
    assert Settings(checkpoint=tiny_checkpoint, detector_input_size=160).detector_input_size == (160, 160)
    assert Settings(checkpoint=tiny_checkpoint, root_path=" /emotion/ ").root_path == "/emotion"
    assert Settings(checkpoint=tiny_checkpoint, root_path="/").root_path == ""


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ({"detector_input_size": "300x"}, "WxH"),
        ({"detector_input_size": "16"}, "32..2048"),
        ({"device": "gpu"}, "device must be"),
        ({"device": "cuda:7"}, "requested but"),
        ({"ssl_certfile": "/nonexistent.pem"}, "both ssl_certfile and ssl_keyfile"),
    ],
)
def test_bad_values_name_the_problem(tiny_checkpoint: Path, bad: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        Settings(checkpoint=tiny_checkpoint, **bad)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="cuda:99"):
        resolve_device("cuda:99")


@pytest.mark.parametrize(
    ("value", "cpu", "cuda"),
    [
        (None, False, True),
        ("auto", False, True),
        ("true", True, True),
        ("false", False, False),
        ("0", False, False),
    ],
)
def test_flip_tta_auto_is_on_where_a_gpu_classifies(
    monkeypatch: pytest.MonkeyPatch, tiny_checkpoint: Path, value: str | None, cpu: bool, cuda: bool
) -> None:
    """Flip TTA costs a CPU ~2.5 ms per face and a GPU next to nothing: ``auto`` (the default) decides by
    device; an explicit value holds everywhere."""
    if value is not None:
        monkeypatch.setenv("EMOTION_FLIP_TTA", value)
    s = Settings(checkpoint=tiny_checkpoint)
    assert (s.flip_tta_on("cpu"), s.flip_tta_on("cuda"), s.flip_tta_on("cuda:1")) == (cpu, cuda, cuda)


def test_flip_tta_refuses_other_words(tiny_checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="flip_tta"):
        Settings(checkpoint=tiny_checkpoint, flip_tta="sometimes")
