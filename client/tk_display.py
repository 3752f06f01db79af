"""A Tk window for the live overlay: no OpenCV, numpy or Pillow needed.

Tk's PhotoImage reads binary PPM, so a frame goes to the screen as its rgb24 bytes with a
small header; the overlay (`client/layout.py`, the same geometry the OpenCV window draws) is
canvas items on top, redrawn per frame. Tk lives on the thread that made it, which is the
event loop's: the render task calls `show`/`poll`, and `poll` pumps Tk's events without blocking.
"""

from __future__ import annotations

import contextlib
import struct
import sys
import tkinter
import tkinter.font
import zlib
from collections.abc import Iterable
from typing import Any

from client.errors import ClientError
from client.layout import RGB, HudStats, Rect, Text, overlay_shapes
from client.picture import size_of, to_ppm
from shared.protocol import FaceResult

WINDOW = "emotion-client (q to quit)"
OVERLAY = "overlay"
_QUIT_KEYS = {"q", "Q", "Escape"}


def _hex(color: RGB) -> str:
    return "#{:02x}{:02x}{:02x}".format(*color)


def _png_pixel(r: int, g: int, b: int, a: int) -> bytes:
    """A 1x1 RGBA PNG: Tk composites a photo's alpha over the canvas, the one translucency it has."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)  # 1x1, 8 bits, RGBA
    idat = zlib.compress(b"\x00" + bytes((r, g, b, a)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class TkViewer:
    def __init__(self, title: str = WINDOW) -> None:
        try:
            self.root = tkinter.Tk(className="emotion-client")
        except tkinter.TclError as exc:  # no display ($DISPLAY unset, no window server)
            raise ClientError(f"Tk cannot open a window ({exc})") from exc
        self.root.title(title)
        self.root.protocol("WM_DELETE_WINDOW", self._quit)
        self.root.bind("<Key>", self._on_key)
        self.canvas = tkinter.Canvas(self.root, highlightthickness=0, background="black")
        self.canvas.pack(fill="both", expand=True)
        self._photo: tkinter.PhotoImage | None = None
        self._image_item = self.canvas.create_image(0, 0, anchor="nw")
        self._fonts: dict[int, tkinter.font.Font] = {}
        self._shades: dict[int, tkinter.PhotoImage] = {}  # 1x1 translucent black, by alpha
        self._panels: list[tkinter.PhotoImage] = []  # this frame's panels: Tk drops unreferenced images
        self._open = True
        self._warned_emoji = False

    def _quit(self) -> None:
        self._open = False

    def _on_key(self, event: Any) -> None:
        if event.keysym in _QUIT_KEYS:
            self._open = False

    def _font(self, scale: float) -> tkinter.font.Font:
        px = max(9, round(scale * 26))  # about the height of OpenCV's Hershey font at this scale
        if px not in self._fonts:
            self._fonts[px] = tkinter.font.Font(root=self.root, family="Helvetica", size=-px)
        return self._fonts[px]

    def measure(self, text: str, scale: float) -> tuple[int, int, int]:
        """`layout.Measure` in the font `show` writes with."""
        font = self._font(scale)
        return font.measure(text), font.metrics("ascent"), font.metrics("descent")

    def show(
        self, image: Any, faces: Iterable[FaceResult], stats: HudStats | None = None, emoji: bool = False
    ) -> bool:
        """Display a frame (RgbImage or BGR array) with the overlay; False once the user asked to quit."""
        if not self._open:
            return False
        if emoji and not self._warned_emoji:
            print("emotion-client: --emoji is drawn by the OpenCV window only", file=sys.stderr)
            self._warned_emoji = True
        w, h = size_of(image)
        ppm = to_ppm(image)
        if self._photo is None or (self._photo.width(), self._photo.height()) != (w, h):
            self._photo = tkinter.PhotoImage(master=self.root, data=ppm, format="ppm")
            self.canvas.itemconfigure(self._image_item, image=self._photo)
            self.canvas.configure(width=w, height=h)
        else:
            self._photo.configure(data=ppm, format="ppm")
        self.canvas.delete(OVERLAY)
        self._panels.clear()
        for shape in overlay_shapes(faces, w, h, self.measure, stats):
            self._draw(shape)
        return self.poll()

    def _draw(self, s: Rect | Text) -> None:
        c = self.canvas
        if isinstance(s, Text):
            font = self._font(s.scale)  # anchor "sw" is the bottom of the descent; Text.y is the baseline
            y = s.y + font.metrics("descent")
            c.create_text(s.x, y, text=s.text, anchor="sw", fill=_hex(s.color), font=font, tags=OVERLAY)
        elif s.shade:  # darken what lies beneath: a translucent black image the panel's size
            w, h = s.x1 - s.x0, s.y1 - s.y0
            if w > 0 and h > 0:
                alpha = round(255 * s.shade)
                if alpha not in self._shades:
                    self._shades[alpha] = tkinter.PhotoImage(
                        master=self.root, data=_png_pixel(0, 0, 0, alpha), format="png"
                    )
                panel = self._shades[alpha].zoom(w, h)
                self._panels.append(panel)
                c.create_image(s.x0, s.y0, image=panel, anchor="nw", tags=OVERLAY)
        elif s.fill is not None:
            c.create_rectangle(s.x0, s.y0, s.x1 + 1, s.y1 + 1, fill=_hex(s.fill), outline="", tags=OVERLAY)
        elif s.outline is not None:
            c.create_rectangle(s.x0, s.y0, s.x1, s.y1, outline=_hex(s.outline), width=s.width, tags=OVERLAY)

    def poll(self) -> bool:
        """Run Tk's pending events; False once the user asked to quit (q, Esc, window closed)."""
        if self._open:
            try:
                self.root.update()
            except tkinter.TclError:  # the window is gone
                self._open = False
        return self._open

    def close(self) -> None:
        with contextlib.suppress(tkinter.TclError):
            self.root.destroy()
