"""Showing frames in a window: OpenCV HighGUI if this OpenCV build has it, else a matplotlib window.

The [client] extra installs *headless* OpenCV (no Qt/GTK wheels to drag in), so the
matplotlib fallback is what most installs use; a full `opencv-python` gives the faster path.
"""

from __future__ import annotations

from typing import Any, Protocol

import cv2
import numpy as np

from client.errors import ClientError, UsageError

WINDOW = "emotion-client (q to quit)"
_QUIT_KEYS = {ord("q"), ord("Q"), 27}


class Viewer(Protocol):
    def show(self, img: np.ndarray) -> bool:
        """Display a BGR frame; False once the user asked to quit (q, Esc, window closed)."""
        ...

    def poll(self) -> bool:
        """Keep the window responsive between frames; False once the user asked to quit."""
        ...

    def close(self) -> None: ...


class CvViewer:
    def __init__(self) -> None:
        cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)  # raises cv2.error on headless builds

    def show(self, img: np.ndarray) -> bool:
        cv2.imshow(WINDOW, img)
        return self.poll()

    def poll(self) -> bool:
        key = cv2.waitKey(1) & 0xFF
        return key not in _QUIT_KEYS and cv2.getWindowProperty(WINDOW, cv2.WND_PROP_VISIBLE) >= 1

    def close(self) -> None:
        cv2.destroyWindow(WINDOW)
        cv2.waitKey(1)


class MplViewer:
    def __init__(self) -> None:
        import matplotlib.pyplot as plt

        backend = plt.get_backend().lower()
        if backend in {"agg", "pdf", "ps", "svg", "cairo", "template"} or "inline" in backend:
            raise ClientError(f"matplotlib has no interactive backend here ({backend})")
        self._plt = plt
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

    def show(self, img: np.ndarray) -> bool:
        rgb = img[..., ::-1]
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


def open_viewer() -> Viewer:
    """The first window backend that works, or a ClientError that says what to do instead."""
    try:
        return CvViewer()
    except cv2.error:
        pass
    try:
        return MplViewer()
    except (ClientError, ImportError) as exc:
        raise UsageError(
            f"cannot open a window: this OpenCV build is headless and {exc}. "
            "Use --no-display (JSON lines) or --record OUT.mp4, or install a GUI build "
            "(pip install opencv-python, or a matplotlib GUI backend such as tkinter)"
        ) from exc
