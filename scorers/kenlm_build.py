"""Build KenLM's `lmplz` and `build_binary` from the kenlm source distribution (what `make kenlm-tools` runs).

    python -m thresher.scorers.kenlm_build [--bin-dir DIR] [--jobs N] [--force]

The pinned `kenlm` wheel only queries models. Its sdist carries the whole C++ tree, estimator included, so
we build the two programs from the same version the Python module was built from (same maximum order,
same binary format). Needs cmake, a C++ compiler and Debian's boost (program_options, system, thread,
test), zlib, bz2 and lzma dev packages; takes about half a minute on two cores. Does nothing when both
programs are already in place.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

from thresher.scorers.kenlm_tools import TOOLS, default_bin_dir

DEBIAN_PACKAGES = (
    "cmake g++ make libboost-program-options-dev libboost-system-dev libboost-thread-dev "
    "libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev"
)
# The `kenlm` wheel is compiled with this maximum order; the binaries must agree with it.
MAX_ORDER = 6


def _run(cmd: list[str], log: Path, cwd: Path | None = None) -> None:
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        code = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT).returncode
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise SystemExit(
            f"kenlm_build: `{' '.join(cmd[:3])} ...` failed (exit {code}):\n{tail}\n\n"
            f"kenlm_build: on Debian/Ubuntu the build needs: apt-get install -y {DEBIAN_PACKAGES}"
        )


def _missing_prerequisites() -> list[str]:
    missing = [tool for tool in ("cmake", "make") if shutil.which(tool) is None]
    if shutil.which("c++") is None and shutil.which("g++") is None:
        missing.append("a C++ compiler")
    return missing


def build(bin_dir: Path, jobs: int, force: bool = False) -> list[Path]:
    targets = [bin_dir / t for t in TOOLS]
    if not force and all(t.is_file() and os.access(t, os.X_OK) for t in targets):
        print(f"kenlm_build: {', '.join(TOOLS)} already in {bin_dir}")
        return targets
    if missing := _missing_prerequisites():
        raise SystemExit(
            f"kenlm_build: {', '.join(missing)} not found; "
            f"on Debian/Ubuntu: apt-get install -y {DEBIAN_PACKAGES}"
        )
    version = metadata.version("kenlm")
    with tempfile.TemporaryDirectory(prefix="kenlm-build-") as tmp_name:
        tmp = Path(tmp_name)
        log = tmp / "build.log"
        print(f"kenlm_build: building {', '.join(TOOLS)} from the kenlm=={version} source distribution")
        # No build isolation: pip would otherwise install cmake and setuptools from source just to read the
        # sdist's metadata.
        _run(
            [
                *(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-build-isolation"),
                *("--no-binary", "kenlm", "-d", str(tmp), f"kenlm=={version}"),
            ],
            log,
        )
        archives = sorted(tmp.glob("kenlm-*.tar.gz"))
        if not archives:
            raise SystemExit(f"kenlm_build: pip did not download a kenlm=={version} source archive")
        with tarfile.open(archives[0]) as archive:
            archive.extractall(tmp / "src", filter="data")
        source = next((tmp / "src").iterdir())
        build_dir = tmp / "build"
        _run(
            [
                *("cmake", "-S", str(source), "-B", str(build_dir)),
                *("-DCMAKE_BUILD_TYPE=Release", f"-DKENLM_MAX_ORDER={MAX_ORDER}"),
            ],
            log,
        )
        _run(["cmake", "--build", str(build_dir), "--target", *TOOLS, "--", f"-j{jobs}"], log)
        bin_dir.mkdir(parents=True, exist_ok=True)
        for name in TOOLS:
            # Copy then rename, so a concurrent build or an interrupted copy never leaves half a program.
            staged = bin_dir / f".{name}.{os.getpid()}.tmp"
            shutil.copy2(build_dir / "bin" / name, staged)
            os.replace(staged, bin_dir / name)
    print(f"kenlm_build: installed {', '.join(str(t) for t in targets)}")
    return targets


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin-dir", type=Path, default=default_bin_dir(), help="Where to install them.")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="Parallel compile jobs.")
    parser.add_argument("--force", action="store_true", help="Rebuild even if both programs exist.")
    args = parser.parse_args(argv)
    build(args.bin_dir, max(1, args.jobs), args.force)


if __name__ == "__main__":
    main()
