"""/openapi.json against what a live server sends: the fields of its replies.

A client generated from the document alone types a field left out of ``required`` as optional.
So each reply a live server sends is compared with the document: every field sent is declared
and required, and every declared field is sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_harness import LiveServer, jpeg_claiming, png_claiming, server_settings

pytestmark = pytest.mark.slow
KEY = "openapi-replies-key-123"
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
    ]


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
    assert {p for _, p, _ in successes} == {"/v1/predict", "/v1/info"}
    body = successes[0][2].json()
    assert body["faces"] and body["faces"][0]["track_id"] is None and set(body["timing_ms"]) >= {"total"}
    problems = []
    for method, path, reply in successes:
        declared = schema["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
        problems += _compare(schema, declared, reply.json(), f"{method} {path}")
    assert not problems, "\n".join(problems)
