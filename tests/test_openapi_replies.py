"""/openapi.json against what a live server sends: reply fields, error codes, response headers.

A client generated from the document alone types a field left out of ``required`` as optional,
reads only the headers a response declares, and learns an error code only from the response's
description and examples. So each reply a live server sends is compared with the document: every
field sent is declared and required (and every declared field sent), every ``code`` that comes
with a status is named in that status's description and examples, and every ``Retry-After`` or
``WWW-Authenticate`` the server sends is declared on the response that carries it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_harness import LiveServer, jpeg_claiming, png_claiming, retry, server_settings

from emotion_service import EmotionAnalyzer
from server.config import Settings
from server.errors import ERRORS, INTERNAL
from server.runtime import load_analyzer
from shared.protocol import ErrorBody

pytestmark = pytest.mark.slow
KEY = "openapi-replies-key-123"
#: Headers the error table adds to replies; ``Connection: close`` is the transport's, not the API's.
ERROR_HEADERS = {name.lower() for spec in ERRORS.values() for name in spec.headers} - {"connection"}
Seen = tuple[str, str, httpx.Response]  # method, path, reply


def _schema(url: str) -> dict[str, Any]:
    schema: dict[str, Any] = httpx.get(url + "/openapi.json").json()
    return schema


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path) -> Iterator[LiveServer]:
    # A small body limit makes payload_too_large cheap to provoke.
    with LiveServer(server_settings(tiny_checkpoint, api_keys=[KEY], max_body_bytes=64 * 1024)) as srv:
        yield srv


@pytest.fixture(scope="module")
def ready_replies(server: LiveServer, astronaut_jpeg: bytes) -> list[Seen]:
    """A ready server's answers: successes and every error a single request can provoke."""
    key = {"X-API-Key": KEY}
    url = server.url
    small_jpeg = jpeg_claiming(16, 16)

    def predict(body: bytes = small_jpeg, query: str = "", **headers: str) -> Seen:
        sent = {"content-type": "image/jpeg", **key, **headers}
        return "post", "/v1/predict", httpx.post(f"{url}/v1/predict{query}", content=body, headers=sent)

    form = httpx.post(url + "/v1/predict", files={"picture": ("a.jpg", small_jpeg)}, headers=key)
    return [
        predict(query="?detect=false"),  # one face, no track_id
        predict(astronaut_jpeg[:60_000]),  # truncated: invalid_image
        predict(b""),  # bad_request
        predict(b"x" * 70_000),  # payload_too_large
        predict(png_claiming(10_000, 10_000)),  # image_too_large
        predict(b"hello, not an image"),  # unsupported_media_type (sniffed)
        predict(**{"content-type": "text/plain"}),  # unsupported_media_type (Content-Type)
        predict(query="?max_faces=0"),  # invalid_parameters (query)
        ("post", "/v1/predict", form),  # invalid_parameters (no 'image' field)
        predict(png_claiming(4000, 10)),  # invalid_image_shape
        predict(**{"X-API-Key": "wrong-key-123"}),  # unauthorized
        ("get", "/v1/info", httpx.get(url + "/v1/info", headers=key)),
        ("get", "/v1/info", httpx.get(url + "/v1/info")),
        ("get", "/metrics", httpx.get(url + "/metrics")),
        ("get", "/healthz", httpx.get(url + "/healthz")),
        ("get", "/readyz", httpx.get(url + "/readyz")),
    ]


@pytest.fixture(scope="module")
def unready_replies(tiny_checkpoint: Path, astronaut_jpeg: bytes) -> list[Seen]:
    """A server still loading its model (503 not_ready) and one whose model failed to load
    (503 load_failed), on every route that answers them."""
    gate = threading.Event()

    def slow(settings: Settings) -> EmotionAnalyzer:
        gate.wait(60)
        return load_analyzer(settings)

    def broken(settings: Settings) -> EmotionAnalyzer:
        raise RuntimeError("weights unreadable")

    seen: list[Seen] = []
    for factory in (slow, broken):
        srv = LiveServer(server_settings(tiny_checkpoint), analyzer_factory=factory).start(wait_ready=False)
        try:
            assert factory is slow or retry(lambda srv=srv: srv.runtime.load_error is not None)
            for path in ("/healthz", "/readyz"):
                seen.append(("get", path, httpx.get(srv.url + path)))
            seen.append(("post", "/v1/predict", httpx.post(srv.url + "/v1/predict", content=astronaut_jpeg)))
        finally:
            gate.set()
            srv.stop()
    return seen


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        name = node["$ref"].removeprefix("#/components/schemas/")
        node = schema["components"]["schemas"][name]
    return node


def _compare(schema: dict[str, Any], node: dict[str, Any], value: Any, where: str) -> list[str]:
    """What in ``value`` (a reply's JSON) the schema ``node`` leaves optional or does not declare."""
    node = _resolve(schema, node)
    if "anyOf" in node:  # a nullable field: compare with the branch the value is in
        branches = [_resolve(schema, b) for b in node["anyOf"]]
        if value is None:
            return [] if any(b.get("type") == "null" for b in branches) else [f"{where}: null, not declared"]
        node = next(b for b in branches if b.get("type") != "null")
    problems: list[str] = []
    if isinstance(value, dict) and "properties" in node:
        declared, required = set(node["properties"]), set(node.get("required", []))
        if set(value) != declared:
            problems.append(f"{where}: sends {sorted(value)}, declares {sorted(declared)}")
        if optional := sorted(set(value) - required):
            problems.append(f"{where}: always sent but optional in the schema: {optional}")
        for name in set(value) & declared:
            problems += _compare(schema, node["properties"][name], value[name], f"{where}.{name}")
    elif isinstance(value, list) and "items" in node:
        for i, item in enumerate(value):
            problems += _compare(schema, node["items"], item, f"{where}[{i}]")
    return problems


def test_every_field_a_reply_sends_is_declared_and_required(
    server: LiveServer, ready_replies: list[Seen]
) -> None:
    """Optional fields become ``Optional[...]`` in a generated client, to be checked on every use:
    a field the server always sends (``timing_ms.*``, ``track_id`` as null, ``precision``) must
    be in ``required``, and a declared field must be one the server sends."""
    schema = _schema(server.url)
    successes = [(m, p, r) for m, p, r in ready_replies if r.status_code == 200]
    assert {p for _, p, _ in successes} == {"/v1/predict", "/v1/info", "/healthz", "/readyz"}
    body = successes[0][2].json()
    assert body["faces"] and body["faces"][0]["track_id"] is None and set(body["timing_ms"]) >= {"total"}
    problems = []
    for method, path, reply in successes:
        declared = schema["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
        problems += _compare(schema, declared, reply.json(), f"{method} {path}")
        if path in ("/healthz", "/readyz"):  # a probe may match on the word: the schema names it
            status = _resolve(schema, declared)["properties"]["status"]
            if [reply.json()["status"]] not in ([status.get("const")], status.get("enum")):
                problems.append(f"{method} {path}: status {reply.json()['status']!r}, declared {status}")
    assert not problems, "\n".join(problems)


def _declared(schema: dict[str, Any], method: str, path: str, status: int) -> dict[str, Any]:
    responses = schema["paths"][path][method]["responses"]
    assert str(status) in responses, f"{method} {path}: {status} is not declared"
    response: dict[str, Any] = responses[str(status)]
    return response


def test_every_error_code_sent_is_listed_under_its_status(
    server: LiveServer, ready_replies: list[Seen], unready_replies: list[Seen]
) -> None:
    """Each (status, code) the server answers is named in that response's description and has an
    example there; and no response lists a code that the error table gives another status."""
    schema = _schema(server.url)
    seen: set[tuple[str, str, int, str]] = set()
    for method, path, reply in ready_replies + unready_replies:
        if reply.status_code == 200:
            continue
        code = ErrorBody.model_validate_json(reply.content).error.code
        seen.add((method, path, reply.status_code, code))
    assert {(s, c) for _, _, s, c in seen} >= {
        (400, "invalid_image"),
        (400, "bad_request"),
        (401, "unauthorized"),
        (413, "payload_too_large"),
        (413, "image_too_large"),
        (415, "unsupported_media_type"),
        (422, "invalid_parameters"),
        (422, "invalid_image_shape"),
        (503, "not_ready"),
        (503, "load_failed"),
    }, seen
    problems = []
    for method, path, status, code in sorted(seen):
        response = _declared(schema, method, path, status)
        examples = response["content"]["application/json"].get("examples", {})
        listed = {e["value"]["error"]["code"] for e in examples.values()}
        if f"`{code}`" not in response["description"] or code not in listed:
            problems.append(f"{method} {path} {status}: {code} not listed ({response['description']!r})")
    statuses = {(spec.code, spec.status) for spec in [*ERRORS.values(), INTERNAL]}
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            for status, response in op["responses"].items():
                for example in (
                    response.get("content", {}).get("application/json", {}).get("examples", {}).values()
                ):
                    ErrorBody.model_validate(example["value"])
                    code = example["value"]["error"]["code"]
                    if (code, int(status)) not in statuses:
                        problems.append(f"{method} {path} {status}: {code} comes with another status")
    assert not problems, "\n".join(problems)


def test_every_header_an_error_sends_is_declared(
    server: LiveServer, ready_replies: list[Seen], unready_replies: list[Seen]
) -> None:
    """``Retry-After`` on 503 not_ready (and overloaded, shutting_down; not load_failed) and
    ``WWW-Authenticate`` on 401 are declared on the response that carries them; one declared
    ``required`` is on every such reply."""
    schema = _schema(server.url)
    problems = []
    checked = set()
    for method, path, reply in ready_replies + unready_replies:
        if reply.status_code == 200:
            continue
        response = _declared(schema, method, path, reply.status_code)
        declared = {name.lower(): h for name, h in response.get("headers", {}).items()}
        for name in ERROR_HEADERS & set(reply.headers):
            checked.add((reply.status_code, name))
            if name not in declared:
                problems.append(f"{method} {path} {reply.status_code}: {name} sent, not declared")
        for name, header in declared.items():
            if header.get("required") and name not in reply.headers:
                problems.append(f"{method} {path} {reply.status_code}: {name} required, not sent")
    assert checked >= {(401, "www-authenticate"), (503, "retry-after")}, checked
    assert not problems, "\n".join(problems)
