"""README's two commands are the whole set-up: `make demo` and `make test` install the system packages
first, and a user who is not root is told the one apt-get command to run."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _make(*args: str, cwd: Path, user_prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(user_prefix or []), "make", "--no-print-directory", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "LC_ALL": "C"},
    )


def test_demo_and_test_check_system_packages_before_building_anything(tmp_path: Path) -> None:
    # A copy without .venv: what a fresh clone sees.
    shutil.copy2(REPO / "Makefile", tmp_path / "Makefile")
    shutil.copy2(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    for target in ("demo", "test"):
        planned = _make("-n", target, cwd=tmp_path)
        assert planned.returncode == 0, planned.stderr
        lines = planned.stdout.splitlines()
        first_package_check = next(i for i, line in enumerate(lines) if "dpkg-query" in line)
        first_venv = next(i for i, line in enumerate(lines) if "-m venv" in line)
        first_kenlm = next(i for i, line in enumerate(lines) if "kenlm_build" in line)
        assert first_package_check < first_venv < first_kenlm, planned.stdout


def test_missing_packages_without_root_name_the_apt_get_command(tmp_path: Path) -> None:
    shutil.copy2(REPO / "Makefile", tmp_path / "Makefile")
    tmp_path.chmod(0o755)
    # As root (CI), drop to an unprivileged user the way a user's own shell would be.
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    result = _make(
        "system-deps", "SYSTEM_PACKAGES=make thresher-no-such-package", cwd=tmp_path, user_prefix=prefix
    )
    assert result.returncode != 0
    message = [line for line in result.stderr.splitlines() if line.startswith("thresher")]
    assert message == [
        "thresher needs Debian packages that are missing; run: sudo apt-get install -y "
        "thresher-no-such-package"
    ], result.stderr


def test_nothing_missing_is_a_quiet_no_op(tmp_path: Path) -> None:
    shutil.copy2(REPO / "Makefile", tmp_path / "Makefile")
    result = _make("system-deps", "SYSTEM_PACKAGES=make", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
