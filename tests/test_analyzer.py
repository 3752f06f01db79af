"""The in-process API: one import, one call, the same reply objects as ``POST /v1/predict``."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from server_harness import LiveServer, server_settings

from emotion_service import (
    CorruptImage,
    DecodeError,
    EmotionAnalyzer,
    ImageTooLarge,
    PredictResponse,
    UnsupportedImage,
)


@pytest.fixture(scope="module")
def analyzer(tiny_checkpoint: Path) -> EmotionAnalyzer:
    return EmotionAnalyzer(tiny_checkpoint, device="cpu", torch_threads=1)


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path) -> Iterator[LiveServer]:
    srv = LiveServer(server_settings(tiny_checkpoint)).start()
    yield srv
    srv.stop()


def faces_of(reply: PredictResponse) -> list[tuple[tuple[int, int, int, int], str, list[float]]]:
    return [
        ((f.box.x, f.box.y, f.box.w, f.box.h), f.dominant, [f.emotions[k] for k in sorted(f.emotions)])
        for f in reply.faces
    ]


def assert_same_faces(a: PredictResponse, b: PredictResponse) -> None:
    fa, fb = faces_of(a), faces_of(b)
    assert [x[:2] for x in fa] == [x[:2] for x in fb]
    for (_, _, pa), (_, _, pb) in zip(fa, fb, strict=True):
        np.testing.assert_allclose(pa, pb, atol=1e-4)


def test_same_reply_as_the_rest_api_for_the_same_bytes(
    analyzer: EmotionAnalyzer, server: LiveServer, astronaut_jpeg: bytes
) -> None:
    local = analyzer.analyze(astronaut_jpeg)
    resp = httpx.post(server.url + "/v1/predict", content=astronaut_jpeg, timeout=30)
    assert resp.status_code == 200, resp.text
    remote = PredictResponse.model_validate_json(resp.content)
    assert isinstance(local, PredictResponse) and local.faces
    assert local.model == remote.model and local.image == remote.image
    assert_same_faces(local, remote)
    for q in ({"max_faces": 1, "min_confidence": 0.9}, {"detect": "false"}):
        remote_q = PredictResponse.model_validate_json(
            httpx.post(server.url + "/v1/predict", params=q, content=astronaut_jpeg, timeout=30).content
        )
        kw = {k: (v == "true" if isinstance(v, str) else v) for k, v in q.items()}
        assert_same_faces(analyzer.analyze(astronaut_jpeg, **kw), remote_q)


def test_the_server_is_built_on_the_analyzer(server: LiveServer) -> None:
    assert isinstance(server.runtime.analyzer, EmotionAnalyzer)
    assert server.runtime.batcher is not None  # the batcher still gathers requests into batches


def test_every_input_kind_gives_the_same_faces(
    analyzer: EmotionAnalyzer, astronaut: np.ndarray, tmp_path: Path
) -> None:
    png = io.BytesIO()
    Image.fromarray(astronaut).save(png, format="PNG")  # lossless: every kind sees the same pixels
    path = tmp_path / "astronaut.png"
    path.write_bytes(png.getvalue())
    reference = analyzer.analyze(astronaut)
    assert reference.faces and (reference.image.width, reference.image.height) == (512, 512)
    for image, kw in [
        (path, {}),
        (str(path), {}),
        (png.getvalue(), {}),
        (Image.fromarray(astronaut), {}),
        (Image.fromarray(astronaut).convert("RGBA"), {}),
        (np.ascontiguousarray(astronaut[:, :, ::-1]), {"channels": "bgr"}),
    ]:
        assert_same_faces(analyzer.analyze(image, **kw), reference)


def test_channel_order_matters_for_arrays(analyzer: EmotionAnalyzer, astronaut: np.ndarray) -> None:
    bgr = np.ascontiguousarray(astronaut[:, :, ::-1])
    as_rgb = analyzer.analyze(bgr, detect=False)  # the same array read the wrong way round
    as_bgr = analyzer.analyze(bgr, channels="bgr", detect=False)
    assert faces_of(as_bgr) != faces_of(as_rgb)


def test_batch_matches_single_calls(analyzer: EmotionAnalyzer, astronaut: np.ndarray) -> None:
    small = np.ascontiguousarray(astronaut[100:400, 100:400])
    batch = analyzer.analyze_batch([astronaut, small])
    assert len(batch) == 2
    assert_same_faces(batch[0], analyzer.analyze(astronaut))
    assert_same_faces(batch[1], analyzer.analyze(small))


def test_an_unknown_channel_order_is_refused(analyzer: EmotionAnalyzer, astronaut: np.ndarray) -> None:
    # "BGR" (or "gray") used to be read as RGB without a word: wrong faces, no error
    for channels in ("BGR", "gray"):
        with pytest.raises(ValueError, match="channels must be 'rgb' or 'bgr'"):
            analyzer.analyze(astronaut, channels=channels)  # type: ignore[arg-type]


def test_a_batch_must_be_a_list_of_images(
    analyzer: EmotionAnalyzer, astronaut: np.ndarray, astronaut_jpeg: bytes
) -> None:
    # a str or bytes is a Sequence too: it used to be iterated character by character
    for one in ("photo.jpg", Path("photo.jpg"), astronaut_jpeg, astronaut):
        with pytest.raises(TypeError, match="use analyze"):
            analyzer.analyze_batch(one)  # type: ignore[arg-type]
    assert len(analyzer.analyze_batch(np.stack([astronaut, astronaut]))) == 2  # N x H x W x 3 is a batch


@pytest.mark.parametrize(
    ("image", "error"),
    [
        (b"not an image at all", UnsupportedImage),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 64, CorruptImage),
        (np.zeros((10, 10, 3), np.float32), DecodeError),
        (np.zeros((10, 10, 5), np.uint8), DecodeError),
        (np.zeros((0, 10, 3), np.uint8), DecodeError),
        (12345, TypeError),
        (Path("/nonexistent/photo.jpg"), FileNotFoundError),
    ],
)
def test_bad_input_raises_a_clear_error(analyzer: EmotionAnalyzer, image: object, error: type) -> None:
    with pytest.raises(error):
        analyzer.analyze(image)


def test_limits_and_options_are_validated(tiny_checkpoint: Path) -> None:
    small = EmotionAnalyzer(tiny_checkpoint, device="cpu", max_pixels=64 * 64, max_faces=2)
    with pytest.raises(ImageTooLarge):
        small.analyze(np.zeros((100, 100, 3), np.uint8))
    assert small.options(max_faces=50).max_faces == 2  # the configured value caps per-call values
    with pytest.raises(ValueError, match="min_confidence"):
        small.options(min_confidence=1.5)
    with pytest.raises(ValueError, match="device"):
        EmotionAnalyzer(tiny_checkpoint, device="tpu")
    with pytest.raises(ValueError, match="max_face"):  # a misspelt option is not dropped silently
        EmotionAnalyzer(tiny_checkpoint, device="cpu", max_face=3)


def test_environment_is_not_read(tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMOTION_MAX_FACES", "1")
    monkeypatch.setenv("EMOTION_API_KEYS", "changeme")  # would stop the server; a library call ignores it
    assert EmotionAnalyzer(tiny_checkpoint, device="cpu").settings.max_faces == 10


def test_the_readme_example_runs(astronaut_jpeg: bytes, tmp_path: Path) -> None:
    """The README's Python API example, as written, on a real photo (bundled model, CPU here)."""
    import re
    import subprocess
    import sys

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Python API") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    (tmp_path / "photo.jpg").write_bytes(astronaut_jpeg)
    proc = subprocess.run(
        [sys.executable, "-c", code.group(1)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert re.match(r"x=\d+ y=\d+ w=\d+ h=\d+ \w+ 0\.\d+", proc.stdout), proc.stdout


def test_a_requests_faces_do_not_depend_on_its_batch_mates_limits(analyzer: EmotionAnalyzer) -> None:
    """The server batches concurrent requests: one asking min_confidence=0.05 (or one face) must not
    change the faces another request gets (the distilled detector's proposals and region passes
    follow those limits; one shared call gave this frame's third face another box and score)."""
    import sys

    from server.pipeline.runner import Job

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from vs_fer import frames

    image = analyzer.decode(frames()["three faces"])
    mine = analyzer.options(None, None, True)

    def faces(result: object) -> list[tuple[list[float], float]]:
        return [([round(float(v), 3) for v in f.box], round(float(f.score), 4)) for f in result.faces]  # type: ignore[attr-defined]

    alone = faces(analyzer.run_batch([Job(image, mine)])[0])
    assert len(alone) == 3
    for mate in ((None, 0.05), (1, None), (None, 0.95)):
        shared = analyzer.run_batch([Job(image, mine), Job(image, analyzer.options(*mate, True))])
        assert faces(shared[0]) == alone, mate


def test_one_instance_answers_several_threads_at_once(
    analyzer: EmotionAnalyzer, astronaut: np.ndarray
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    small = np.ascontiguousarray(astronaut[50:450, 60:460])
    want = [analyzer.analyze(astronaut), analyzer.analyze(small)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda k: (k % 2, analyzer.analyze([astronaut, small][k % 2])), range(24)))
    for k, reply in got:
        assert_same_faces(reply, want[k])
