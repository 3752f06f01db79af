"""Writes one benchmark's results into its own section of a Markdown doc, leaving the others alone."""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, section: str, body: str) -> None:
    """Replace the ``section`` heading's block (up to the next ``## ``) with ``body``, or append it."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start = text.find(section + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + body
    else:
        end = text.find("\n## ", start + len(section))
        rest = "\n\n" + text[end + 1 :] if end >= 0 else ""  # a blank line before the next heading
        text = text[:start] + body.rstrip("\n") + rest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")


def write_marked(path: Path, start: str, end: str, block: str, title: str = "# Benchmarks") -> None:
    """Replace the text from marker ``start`` to marker ``end`` (both kept) with ``block``, or append it.

    For results that sit inside a hand-written section rather than owning a whole ``## `` heading.
    """
    text = path.read_text() if path.exists() else title + "\n"
    block = "\n".join([start, block, end])
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
