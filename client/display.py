"""Showing frames with the overlay in a window: the first of OpenCV HighGUI, Tk, matplotlib that works.

The `camera` extra installs *headless* OpenCV (no Qt/GTK wheels to drag in) and the lean `webcam`
extra no OpenCV at all, so most installs get the Tk window (`client/tk_display.py`; Python's own
tkinter: on Debian/Ubuntu `apt install python3-tk`); a full `opencv-python` gives HighGUI, and
matplotlib's GUI backends are the last resort. Every window takes the frame and the reply, and
draws the same overlay (`client/layout.py`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from client.errors import ClientError, UsageError
from client.layout import HudStats
from client.picture import to_bgr
from shared.protocol import FaceResult

WINDOW = "emotion-client (q to quit)"
_QUIT_KEYS = {ord("q"), ord("Q"), 27}


class Viewer(Protocol):
    def show(
        self, image: Any, faces: Iterable[FaceResult], stats: HudStats | None = None, emoji: bool = False
    ) -> bool:
        """Display a frame (BGR array or RgbImage) with the overlay; False once the user asked to quit
        (q, Esc, window closed)."""
        ...

    def poll(self) -> bool:
        """Keep the window responsive between frames; False once the user asked to quit."""
        ...

    def close(self) -> None: ...


class CvViewer:
    def __init__(self) -> None:
        import cv2

        from client.overlay import draw_result

        self._cv2, self._draw = cv2, draw_result
        try:
            cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
        except cv2.error as exc:
            raise ClientError("this OpenCV build is headless") from exc

    def show(
        self, image: Any, faces: Iterable[FaceResult], stats: HudStats | None = None, emoji: bool = False
    ) -> bool:
        self._cv2.imshow(WINDOW, self._draw(to_bgr(image), faces, stats, emoji=emoji))
        return self.poll()

    def poll(self) -> bool:
        cv2 = self._cv2
        key = cv2.waitKey(1) & 0xFF
        return key not in _QUIT_KEYS and cv2.getWindowProperty(WINDOW, cv2.WND_PROP_VISIBLE) >= 1

    def close(self) -> None:
        self._cv2.destroyWindow(WINDOW)
        self._cv2.waitKey(1)


class MplViewer:
    def __init__(self) -> None:
        import matplotlib.pyplot as plt

        from client.overlay import draw_result  # OpenCV draws the overlay onto the array shown

        backend = plt.get_backend().lower()
        if backend in {"agg", "pdf", "ps", "svg", "cairo", "template"} or "inline" in backend:
            raise ClientError(f"matplotlib has no interactive backend here ({backend})")
        self._plt, self._draw = plt, draw_result
        self.fig, self.ax = plt.subplots(num=WINDOW)
        self.ax.set_axis_off()
        self.fig.tight_layout(pad=0)
        self._im: Any = None
        self._open = True
        self.fig.canvas.mpl_connect("key_press_event", self._on_key)
        self.fig.canvas.mpl_connect("close_event", self._on_close)
        plt.show(block=False)

    def _on_key(self, event: Any) -> None:
        if event.key in {"q", "Q", "escape"}:
            self._open = False

    def _on_close(self, _event: Any) -> None:
        self._open = False

    def show(
        self, image: Any, faces: Iterable[FaceResult], stats: HudStats | None = None, emoji: bool = False
    ) -> bool:
        rgb = self._draw(to_bgr(image), faces, stats, emoji=emoji)[..., ::-1]
        if self._im is None or self._im.get_array().shape != rgb.shape:
            self.ax.clear()
            self.ax.set_axis_off()
            self._im = self.ax.imshow(rgb)
        else:
            self._im.set_data(rgb)
        self.fig.canvas.draw_idle()
        return self.poll()

    def poll(self) -> bool:
        self.fig.canvas.flush_events()
        return self._open

    def close(self) -> None:
        self._plt.close(self.fig)


def _tk_viewer() -> Viewer:
    from client.tk_display import TkViewer

    return TkViewer()


def open_viewer() -> Viewer:
    """The first window backend that works, or a UsageError that says what to do instead."""
    reasons: list[str] = []
    for name, factory in (("OpenCV", CvViewer), ("Tk", _tk_viewer), ("matplotlib", MplViewer)):
        try:
            return factory()
        except ImportError as exc:
            reasons.append(f"{name}: not installed ({exc.name or exc})")
        except ClientError as exc:
            reasons.append(f"{name}: {exc}")
    raise UsageError(
        "cannot open a window (" + "; ".join(reasons) + "). Use --no-display (JSON lines) or "
        "--record OUT.mp4, or give Python a window system: tkinter (Debian/Ubuntu: apt install "
        "python3-tk) with a display, or pip install opencv-python"
    )
