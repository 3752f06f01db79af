"""The two SSD head layouts, and the prototxt that makes ``cv2.dnn`` compute each.

``"deploy"`` is ``deploy.prototxt.txt`` as shipped: conv8_2 and conv9_2 padded by 1, which
makes the phantom faces of docs/detection.md. ``"trained"`` runs them unpadded, so their
maps match their prior steps (see :class:`~server.pipeline.detect.network.Res10SSD`).
"""

from __future__ import annotations

import re

LAYOUTS = ("trained", "deploy")


def prototxt_for_layout(text: str, layout: str) -> str:
    """``deploy.prototxt.txt`` text rewritten for ``layout``: ``"trained"`` sets the padding of
    ``conv8_2_h`` and ``conv9_2_h`` to 0, so ``cv2.dnn`` computes the network this module runs
    (for parity checks); ``"deploy"`` returns the text unchanged."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "deploy":
        return text
    for name in ("conv8_2_h", "conv9_2_h"):
        pattern = re.compile(r'(name:\s*"' + name + r'"\s.*?convolution_param\s*\{[^}]*?pad:\s*)1\b', re.S)
        text, n = pattern.subn(r"\g<1>0", text, count=1)
        if n != 1:
            raise ValueError(f"no padded {name} convolution in the prototxt")
    return text
