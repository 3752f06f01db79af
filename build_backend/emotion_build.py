"""In-tree build backend: setuptools, told whether the build is editable.

A regular wheel of this project holds only the client side (``shared``, ``client``): the
server code and its 22 MB checkpoint come with the ``server``/``train`` extras as a second
distribution, ``packaging/server``. An editable install (``pip install -e ".[dev]"``) maps every
package of the checkout instead, so edits take effect without a reinstall. Extras cannot change
which files a wheel holds, so this flag is how setup.py tells the two cases apart.
"""

from __future__ import annotations

import os
from typing import Any

from setuptools import build_meta as _meta
from setuptools.build_meta import *  # noqa: F403  (re-export the standard hooks)

EDITABLE = "EMOTION_BUILD_EDITABLE"


def _editable(fn: Any, *args: Any, **kwargs: Any) -> Any:
    os.environ[EDITABLE] = "1"
    try:
        return fn(*args, **kwargs)
    finally:
        os.environ.pop(EDITABLE, None)


def get_requires_for_build_editable(config_settings: Any = None) -> Any:
    return _editable(_meta.get_requires_for_build_editable, config_settings)


def prepare_metadata_for_build_editable(metadata_directory: str, config_settings: Any = None) -> Any:
    return _editable(_meta.prepare_metadata_for_build_editable, metadata_directory, config_settings)


def build_editable(
    wheel_directory: str, config_settings: Any = None, metadata_directory: str | None = None
) -> Any:
    return _editable(_meta.build_editable, wheel_directory, config_settings, metadata_directory)
