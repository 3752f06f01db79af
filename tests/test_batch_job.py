"""Batch and video jobs (`emotion-client analyze` / `predict`): per-file errors, JSONL/CSV, video timing.

Real files (scikit-image photos, an MJPG clip), a real server on loopback for `--server`, and the
in-process analyzer otherwise.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from server_harness import LiveServer, server_settings

from client.cli import EXIT_FAIL, main
from shared.emotions import EMOTIONS
from shared.protocol import PredictResponse

FRAMES = 9
FPS = 12.5  # 80 ms per frame


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path) -> Iterator[LiveServer]:
    with LiveServer(server_settings(tiny_checkpoint)) as srv:
        yield srv


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> dict[str, Path]:
    from skimage import data

    folder = tmp_path_factory.mktemp("inputs")
    paths = {
        "astro": folder / "astro.jpg",
        "readme": folder / "README.md",
        "camera": folder / "camera.png",
        "chelsea": folder / "chelsea.jpg",
        "video": folder / "clip.avi",
        "broken_video": folder / "broken.mp4",
    }
    cv2.imwrite(str(paths["astro"]), np.ascontiguousarray(astronaut[..., ::-1]))
    paths["readme"].write_text("# not an image\n")
    cv2.imwrite(str(paths["camera"]), data.camera())
    cv2.imwrite(str(paths["chelsea"]), np.ascontiguousarray(data.chelsea()[..., ::-1]))
    paths["broken_video"].write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 200)
    writer = cv2.VideoWriter(str(paths["video"]), cv2.VideoWriter.fourcc(*"MJPG"), FPS, (640, 512))
    bgr = np.ascontiguousarray(astronaut[..., ::-1])
    for i in range(FRAMES):
        frame = np.zeros((512, 640, 3), np.uint8)
        frame[:, 8 * i : 8 * i + 512] = bgr
        writer.write(frame)
    writer.release()
    return paths


def lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_predict_reports_a_bad_file_and_goes_on(
    server: LiveServer, files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 16.1: `predict astro.jpg README.md camera.png chelsea.jpg --annotate ann/`."""
    order = [files["astro"], files["readme"], files["camera"], files["chelsea"]]
    ann = tmp_path / "ann"
    code = main(["predict", *map(str, order), "--server", server.url, "--annotate", str(ann)])
    out, err = capsys.readouterr()
    assert code == EXIT_FAIL  # something was skipped; everything else was done
    docs = lines(out)
    assert [d["file"] for d in docs] == list(map(str, order))
    assert docs[1]["error"]["code"] == "unsupported_media_type"  # type: ignore[index]
    for doc in (docs[0], docs[2], docs[3]):
        PredictResponse.model_validate(doc)
    assert f"skipped {files['readme']}: unsupported_media_type" in err
    assert err.count("unsupported_media_type") == 2  # the skip line and the summary, each once
    assert "HTTP 415" not in docs[1]["error"]["message"]  # type: ignore[index]  # the server's message alone
    assert "4 file(s): 3 image(s)" in err and "1 bad file(s) skipped" in err
    assert sorted(p.name for p in ann.iterdir()) == [
        "astro.annotated.png",
        "camera.annotated.png",
        "chelsea.annotated.png",
    ]


def test_predict_csv_and_the_apis_options(
    server: LiveServer, files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "faces.csv"
    args = ["predict", str(files["astro"]), str(files["chelsea"]), "--server", server.url, "-o", str(out)]
    assert main([*args, "--max-faces", "1", "--min-confidence", "0.2"]) == 0
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert [r["file"] for r in rows] == [str(files["astro"]), str(files["chelsea"])]  # one face each
    astro = rows[0]
    assert float(astro["confidence"]) > 0.9 and int(astro["w"]) > 50
    assert sum(float(astro[e]) for e in EMOTIONS) == pytest.approx(1.0, abs=1e-4)
    assert astro["dominant"] == max(EMOTIONS, key=lambda e: float(astro[e]))
    assert main([*args, "--no-detect"]) == 0  # the whole image is the face
    whole = next(iter(csv.DictReader(out.read_text().splitlines())))
    assert (whole["x"], whole["y"], whole["w"], whole["h"], whole["confidence"]) == (
        "0",
        "0",
        "512",
        "512",
        "1.0",
    )
    capsys.readouterr()


def test_analyze_in_process_folder_with_video_and_plot(
    files: dict[str, Path], tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.jsonl"
    folder = files["astro"].parent
    code = main(
        [
            "analyze",
            str(folder),
            "-o",
            str(out),
            "--progress",
            "--checkpoint",
            str(tiny_checkpoint),
            "--device",
            "cpu",
        ]
    )
    _, err = capsys.readouterr()
    assert code == EXIT_FAIL  # broken.mp4 (README.md is not picked from a folder: not a media file)
    docs = lines(out.read_text())
    by_file: dict[str, list[dict[str, object]]] = {}
    for d in docs:
        by_file.setdefault(Path(str(d["file"])).name, []).append(d)
    assert sorted(by_file) == ["astro.jpg", "broken.mp4", "camera.png", "chelsea.jpg", "clip.avi"]
    assert by_file["broken.mp4"][0]["error"]["code"] == "invalid_video"  # type: ignore[index]
    video = by_file["clip.avi"]
    assert [d["frame"] for d in video] == list(range(FRAMES))
    assert [d["ts_ms"] for d in video] == pytest.approx([80.0 * i for i in range(FRAMES)], abs=1.0)
    tracks = {f["track_id"] for d in video for f in d["faces"]}  # type: ignore[attr-defined]
    assert tracks == {1}, "one face drifting sideways keeps one track id"
    assert "frame/s" in err and "<" in err  # tqdm: throughput and ETA
    assert "1 video(s) with 9 frame(s)" in err and "1 bad file(s) skipped: " in err
    plot = tmp_path / "results.clip.timeline.png"  # one plot per video: two videos in the folder
    assert f"wrote {plot}" in err and cv2.imread(str(plot)) is not None


def test_analyze_every_nth_frame_to_csv(
    files: dict[str, Path], tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["analyze", str(files["video"]), "--every", "4", "--format", "csv", "--no-plot"]
    assert main([*args, "--checkpoint", str(tiny_checkpoint), "--device", "cpu"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["frame"], float(r["ts_ms"])) for r in rows] == [("0", 0.0), ("4", 320.0), ("8", 640.0)]
    assert {r["track_id"] for r in rows} == {"1"}


def test_analyze_against_a_server_matches_in_process(
    server: LiveServer, files: dict[str, Path], tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = [str(files["astro"]), str(files["video"])]
    assert main(["analyze", *paths, "--server", server.url, "--no-plot"]) == 0
    remote = lines(capsys.readouterr().out)
    assert main(["analyze", *paths, "--checkpoint", str(tiny_checkpoint), "--device", "cpu"]) == 0
    local = lines(capsys.readouterr().out)
    assert [(d["file"], d.get("frame")) for d in remote] == [(d["file"], d.get("frame")) for d in local]
    for r, lo in zip(remote, local, strict=True):
        assert [f["dominant"] for f in r["faces"]] == [f["dominant"] for f in lo["faces"]]  # type: ignore[attr-defined]


def test_unreachable_server_ends_the_job(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["predict", str(files["astro"]), str(files["camera"]), "--server", "http://127.0.0.1:9"])
        == EXIT_FAIL
    )
    assert "cannot reach http://127.0.0.1:9/v1/predict" in capsys.readouterr().err


def test_in_process_options_with_a_server_are_a_usage_error(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """`--device`/`--checkpoint` cannot change a server's model: refused before any work, not ignored."""
    args = ["predict", str(files["astro"]), "--server", "http://127.0.0.1:9"]
    assert main([*args, "--device", "cuda:7"]) == 2
    assert main([*args, "--checkpoint", "nope.safetensors"]) == 2
    err = capsys.readouterr().err
    assert err.count("--device and --checkpoint are for in-process analysis") == 2
    assert "cannot reach" not in err


def test_an_unreadable_video_is_one_clear_line(files: dict[str, Path]) -> None:
    """Only the client's own words: FFmpeg's log ("moov atom not found") is silenced (a subprocess,
    since FFmpeg reads its log level once per process)."""
    import subprocess
    import sys

    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "client",
            "predict",
            str(files["broken_video"]),
            "--server",
            "http://127.0.0.1:9",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == EXIT_FAIL, run.stderr
    assert "invalid_video" in run.stderr and "moov" not in run.stderr and "@ 0x" not in run.stderr, run.stderr
