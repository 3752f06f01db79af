"""Protobuf text format (Caffe's ``.prototxt``) read into nested dicts.

Only the deploy prototxt's layer parameters are needed (prior boxes, detection output,
BatchNorm eps), so a small tokenizer beats a dependency on Caffe's generated schema.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_TOKEN = re.compile(r'\s*(?:#[^\n]*|("(?:[^"\\]|\\.)*")|([{}:])|([^\s{}:#"]+))')


def _tokens(text: str) -> Iterator[str]:
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            if text[pos:].strip():
                raise ValueError(f"prototxt: cannot parse near {text[pos : pos + 30]!r}")
            return
        pos = m.end()
        tok = m.group(1) or m.group(2) or m.group(3)
        if tok:
            yield tok


def _scalar(tok: str) -> Any:
    if tok.startswith('"'):
        return tok[1:-1]
    if tok in ("true", "false"):
        return tok == "true"
    for cast in (int, float):
        try:
            return cast(tok)
        except ValueError:
            pass
    return tok  # enum name such as CENTER_SIZE


def parse_prototxt(text: str) -> dict[str, list[Any]]:
    """Protobuf text format into nested dicts; every field maps to a list (fields repeat)."""
    stack: list[dict[str, list[Any]]] = [{}]
    toks = _tokens(text)
    for tok in toks:
        if tok == "}":
            stack.pop()
            continue
        nxt = next(toks)
        if nxt == ":":
            val = next(toks)
            if val == "{":  # "name: { ... }" is legal too
                child: dict[str, list[Any]] = {}
                stack[-1].setdefault(tok, []).append(child)
                stack.append(child)
            else:
                stack[-1].setdefault(tok, []).append(_scalar(val))
        elif nxt == "{":
            child = {}
            stack[-1].setdefault(tok, []).append(child)
            stack.append(child)
        else:
            raise ValueError(f"prototxt: unexpected {nxt!r} after {tok!r}")
    return stack[0]


def prototxt_layers(path: Path) -> dict[str, dict[str, list[Any]]]:
    """Layers of a deploy prototxt by name."""
    net = parse_prototxt(path.read_text())
    return {layer["name"][0]: layer for layer in net.get("layer", [])}
