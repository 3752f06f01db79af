"""Static checks of the container files (no Docker engine needed), plus the image's warm-up step run here."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.cli import main

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = (REPO / "docker" / "Dockerfile").read_text()


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(
        r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    )
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())  # resolves the << merges
    return data


def test_compose_gpu_service(compose: dict[str, Any]) -> None:
    server = compose["services"]["server"]
    assert "profiles" not in server  # `docker compose up` starts it
    assert server["ports"] == ["8000:8000"]
    assert server["build"]["dockerfile"] == "docker/Dockerfile" and server["build"]["context"] == "."
    health = " ".join(server["healthcheck"]["test"])
    assert "http://127.0.0.1:8000/readyz" in health
    (device,) = server["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


def test_compose_cpu_override(compose: dict[str, Any]) -> None:
    cpu = compose["services"]["server-cpu"]
    assert cpu["profiles"] == ["cpu"]  # only when asked for: `docker compose up server-cpu`
    assert cpu["environment"]["EMOTION_DEVICE"] == "cpu"
    assert "deploy" not in cpu  # no GPU reservation
    assert cpu["ports"] == ["8000:8000"] and "healthcheck" in cpu
    assert (
        cpu["build"]["dockerfile"] == "docker/Dockerfile"
        and "whl/cpu" in cpu["build"]["args"]["TORCH_INDEX_URL"]
    )


def test_dockerfile() -> None:
    ins = instructions(DOCKERFILE)
    kinds = [k for k, _ in ins]
    assert kinds[0] in ("FROM", "ARG")
    users = [v for k, v in ins if k == "USER"]
    assert users and users[-1] not in ("root", "0")  # runs unprivileged
    assert kinds.index("USER") > max(
        i for i, k in enumerate(kinds) if k == "RUN"
    )  # nothing runs as root after
    (health,) = [v for k, v in ins if k == "HEALTHCHECK"]
    assert "/healthz" in health
    assert ("EXPOSE", "8000") in ins
    env = " ".join(v for k, v in ins if k == "ENV")
    assert "EMOTION_CACHE_DIR=" in env and "EMOTION_HOST=0.0.0.0" in env
    assert any("emotion-server --warmup-only" in v for k, v in ins if k == "RUN")
    assert ins[-1] == ("CMD", '["emotion-server"]')
    torch_pin = re.search(r"ARG TORCH_VERSION=(\S+)", DOCKERFILE)
    readme = (REPO / "README.md").read_text()
    assert torch_pin and f"torch=={torch_pin.group(1)}" in readme  # the image runs the tested version


def test_dockerignore_keeps_what_the_image_needs() -> None:
    lines = [
        x.strip() for x in (REPO / ".dockerignore").read_text().splitlines() if x.strip() and x[0] != "#"
    ]
    assert lines[0] == "*"  # deny by default: no runs/, .venv, data or secrets in the build context
    needed_files = ("pyproject.toml", "setup.py", "README.md", "build_backend/", "packaging/")
    for needed in (*needed_files, "shared/", "server/", "emotion_service/"):
        assert f"!{needed}" in lines
    assert not any("checkpoints" in x or "safetensors" in x for x in lines)  # the checkpoint ships


def test_image_warmup_step_runs(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Dockerfile's build-time warm-up command, run with this checkout's code."""
    cmd = next(v for k, v in instructions(DOCKERFILE) if k == "RUN" and "--warmup-only" in v)
    step = next(part for part in cmd.split("&&") if "emotion-server" in part)
    argv = shlex.split(step)[1:]
    monkeypatch.setenv("EMOTION_CACHE_DIR", str(tmp_path))
    assert main([*argv, "--checkpoint", str(tiny_checkpoint), "--torch-threads", "1"]) == 0
    assert list(tmp_path.glob("*.safetensors")), "the detector cache is baked into the image"
