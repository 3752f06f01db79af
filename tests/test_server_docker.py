"""Static checks of the container files (no Docker engine needed), plus the image's warm-up step run here."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
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


_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's ``${NAME:-default}`` substitution, as `docker compose config` does it."""
    env = env or {}
    return _VAR.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)


def test_compose_gpu_service(compose: dict[str, Any]) -> None:
    server = compose["services"]["server"]
    assert "profiles" not in server  # `docker compose up` starts it
    assert server["build"]["dockerfile"] == "docker/Dockerfile" and server["build"]["context"] == "."
    health = " ".join(server["healthcheck"]["test"])
    assert "://127.0.0.1:8000/readyz" in health
    (device,) = server["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


@pytest.mark.parametrize("service", ["server", "server-cpu"])
def test_compose_publishes_on_loopback_unless_asked(compose: dict[str, Any], service: str) -> None:
    """No key by default, so by default only this host can reach it; EMOTION_BIND opens it on purpose."""
    (port,) = compose["services"][service]["ports"]
    assert interpolate(port) == "127.0.0.1:8000:8000"
    assert interpolate(port, {"EMOTION_BIND": "0.0.0.0"}) == "0.0.0.0:8000:8000"
    header = (REPO / "docker-compose.yml").read_text().split("x-server")[0]
    assert "127.0.0.1" in header and "EMOTION_BIND=0.0.0.0" in header
    assert "EMOTION_BIND=0.0.0.0" in (REPO / "README.md").read_text()


def test_compose_gpu_service_fails_fast_without_a_gpu(
    compose: dict[str, Any], tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The GPU service asks for CUDA outright: on a host without a usable GPU it stops with a message
    at startup (exit 2) instead of quietly serving from the CPU."""
    import torch

    device = interpolate(compose["services"]["server"]["environment"]["EMOTION_DEVICE"])
    assert device == "cuda"
    if torch.cuda.is_available():
        pytest.skip("this host has a GPU")
    assert main(["--device", device, "--checkpoint", str(tiny_checkpoint)]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_compose_healthcheck_command_passes_against_a_ready_server(
    compose: dict[str, Any], tiny_checkpoint: Path, tmp_path: Path, tls: bool
) -> None:
    """The healthcheck's own command, run against a real server (its port swapped in), plain and TLS."""
    from selfsigned import make_cert
    from server_harness import LiveServer, server_settings

    tls_files = dict(zip(("ssl_certfile", "ssl_keyfile"), make_cert(tmp_path), strict=True)) if tls else {}
    server = LiveServer(server_settings(tiny_checkpoint, **tls_files)).start(wait_ready=False)
    try:
        cmd = compose["services"]["server"]["healthcheck"]["test"]
        assert cmd[:3] == ["CMD", "python", "-c"]
        code = cmd[3].replace(":8000/", f":{server.port}/")
        env = os.environ | ({"EMOTION_SSL_CERTFILE": str(tls_files["ssl_certfile"])} if tls else {})
        deadline = time.monotonic() + 120
        while subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, check=False
        ).returncode:
            assert time.monotonic() < deadline, "healthcheck never passed"
            time.sleep(0.5)
    finally:
        server.stop()


def test_compose_cpu_override(compose: dict[str, Any]) -> None:
    cpu = compose["services"]["server-cpu"]
    assert cpu["profiles"] == ["cpu"]  # only when asked for: `docker compose up server-cpu`
    assert cpu["environment"]["EMOTION_DEVICE"] == "cpu"
    assert "deploy" not in cpu  # no GPU reservation
    assert cpu["ports"] == compose["services"]["server"]["ports"] and "healthcheck" in cpu
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


def _torch_pin(command: str) -> str:
    torch = re.search(r"\btorch==(\S+)", command)
    assert torch, command
    return torch.group(1)


def test_readme_offers_a_cpu_only_install_next_to_the_default() -> None:
    """The first two commands stay as they are (PyPI only, they work on any fresh machine); a
    CPU-only variant of the server install sits beside them, with the same tested versions."""
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    first = [line for line in blocks[0].splitlines() if line.strip() and not line.startswith("#")]
    assert len(first) == 2 and all("--index-url" not in line for line in first)
    assert '-e ".[server]"' in first[0] and "emotion-server" in first[0] and '-e ".[dev]"' in first[1]
    cpu = next(b for b in blocks if "download.pytorch.org/whl/cpu" in b).replace("\\\n", " ")
    assert "--index-url https://download.pytorch.org/whl/cpu" in cpu and '-e ".[server]"' in cpu
    assert _torch_pin(cpu) == _torch_pin(first[0]) == _torch_pin(first[1])
    # the server needs no torchvision (server/model/resnet.py); the tests' install pins it for training
    assert "torchvision" not in first[0] + cpu and re.search(r"\btorchvision==\S+", first[1])
    section = readme[: readme.index("## Layout")]
    assert section.index("download.pytorch.org/whl/cpu") > section.index(first[1]), "next to the default"
