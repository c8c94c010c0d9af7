"""A regular (non-editable) `pip install .` gives a working `thresher` under one `thresher` namespace."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_non_editable_install_runs_and_installs_no_top_level_cli(tmp_path: Path) -> None:
    # Copy the tracked sources: a build writes build/ and egg-info beside them.
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    src = tmp_path / "src"
    for name in files:
        if name.startswith(("sample_data/", "tests/")) or not (REPO / name).is_file():
            continue
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, src / name)

    # A fresh venv that borrows the dependencies already installed (they are large and pinned), but not
    # the editable thresher: a .pth path line adds a folder without running that folder's own .pth hooks.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (site / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(src)],
        check=True,
        capture_output=True,
    )

    located = subprocess.run(
        [
            str(python),
            "-c",
            "import thresher.cli, thresher.pipelines.stages.ingest.stage as m; "
            "print(thresher.cli.__file__); print(m.__file__)",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout.split()
    assert all(Path(p).is_relative_to(site) for p in located), located
    assert (
        not (site / "cli").exists() and not (site / "pipelines").exists() and not (site / "scorers").exists()
    )
    assert (site / "thresher" / "pipelines" / "stages" / "dedup" / "exact.py").exists()

    help_text = subprocess.run(
        [str(venv / "bin" / "thresher"), "--help"], capture_output=True, text=True, check=True, cwd=tmp_path
    ).stdout
    assert "ingest" in help_text and "dedup" in help_text
    stages = subprocess.run(
        [str(venv / "bin" / "thresher"), "stages"], capture_output=True, text=True, check=True, cwd=tmp_path
    ).stdout
    assert "exact-dedup" in stages and "ingest" in stages
