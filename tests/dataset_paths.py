"""Where the tests find the shared datasets; tests that need one skip when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
FER2013 = Path(os.environ.get("FER2013_PATH", SHARED / "fer2013.tar.gz"))
#: Labelled real photos, ``<class>/<person>_<nnnn>.jpg`` (its README: one person each).
REALFACES = Path(os.environ.get("REALFACES_PATH", SHARED / "realfaces-dev"))
