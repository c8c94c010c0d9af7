"""Headless Chromium for the report tests: a page rendered to PNG pixels the test then reads."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np


def screenshot(page: Path, shot: Path, height: int) -> np.ndarray:
    """`page` rendered 1200 pixels wide and `height` tall into `shot`; its RGB pixels (int16, so
    differences of channels do not wrap)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is needed for this test: apt-get install chromium (see .ci/run)"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            # Offline: nothing the browser would fetch on its own.
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={shot.parent / 'profile'}",
            f"--window-size=1200,{height}",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    from PIL import Image

    return np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
