"""The lean client: a regular wheel of this project holds the client side only; the server code and
its checkpoint are a second distribution (packaging/server) that the server extras pull in."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def build_wheel(source: Path, out: Path) -> zipfile.ZipFile:
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out)]
    proc = subprocess.run([*cmd, str(source)], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = out.glob("*.whl")
    return zipfile.ZipFile(wheel)


def test_client_wheel_has_no_server_code_or_checkpoint(tmp_path: Path) -> None:
    stale = REPO / "build" / "lib" / "server"  # what an older build may have left: must not leak in
    stale.mkdir(parents=True, exist_ok=True)
    whl = build_wheel(REPO, tmp_path)
    tops = {name.split("/")[0] for name in whl.namelist() if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"shared", "client"}
    assert not [n for n in whl.namelist() if n.endswith(".safetensors")]
    meta_name = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
    requires = Parser().parsestr(whl.read(meta_name).decode()).get_all("Requires-Dist") or []
    server = [r for r in requires if 'extra == "server"' in r]
    assert any(r.startswith("emotion-service-server[server] @ file://") for r in server), server
    client = [r.split(";")[0].strip() for r in requires if 'extra == "client"' in r]
    assert not any(r.startswith(("opencv", "matplotlib", "numpy", "torch")) for r in client), client
    entry_points = whl.read(meta_name.replace("METADATA", "entry_points.txt")).decode()
    assert "emotion-client" in entry_points and "emotion-server" not in entry_points


def test_server_distribution_ships_the_code_checkpoint_and_commands(tmp_path: Path) -> None:
    whl = build_wheel(REPO / "packaging" / "server", tmp_path)
    names = whl.namelist()
    assert "server/checkpoints/emotion-resnet18.safetensors" in names
    # the int8 builds the CPU path runs by default: the classifier's beside it, the face detector's
    assert {
        "server/checkpoints/emotion-resnet18.int8.xml",
        "server/checkpoints/emotion-resnet18.int8.bin",
    } <= set(names)
    assert "server/checkpoints/ssd-int8/res10-ssd-int8.bin" in names
    # the distilled SSD (the default detector's proposer) and its int8 build
    assert {
        "server/checkpoints/ssd-half/res10-ssd-half.safetensors",
        "server/checkpoints/ssd-half/res10-ssd-half.int8.xml",
        "server/checkpoints/ssd-half/res10-ssd-half.int8.bin",
    } <= set(names)
    assert "server/checkpoints/blazeface/face_detection_back.tflite" in names  # EMOTION_DETECTOR=blazeface
    assert "server/api/web/index.html" in names and "emotion_service/analyzer.py" in names
    # PEP 561 markers: emotion_service's public names (DecodeError, ...) come from server
    assert {"emotion_service/py.typed", "server/py.typed"} <= set(names)
    assert not any(n.startswith(("client/", "shared/")) for n in names)  # those come from emotion-service
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "emotion-server = server.cli:main" in whl.read(entry_points).decode()
