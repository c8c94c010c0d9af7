"""KenLM's command-line estimator (`lmplz`) and converter (`build_binary`): finding and running them.

The `kenlm` Python package only queries models; estimating one takes these two programs, which
`make kenlm-tools` (`python -m thresher.scorers.kenlm_build`) compiles from the kenlm source distribution
into the virtualenv's bin folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from collections.abc import Sequence
from pathlib import Path

from thresher.pipelines.engine.errors import ThresherError

TOOLS = ("lmplz", "build_binary")
BUILD_HINT = "run `make kenlm-tools` to build it from the kenlm source distribution"


def default_bin_dir() -> Path:
    """Where `make kenlm-tools` puts the programs: the scripts folder of this Python (the venv's bin),
    searched even when the venv is not activated (the Makefile calls .venv/bin/thresher directly)."""
    return Path(sysconfig.get_path("scripts"))


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_tool(name: str, bin_dir: str | Path | None = None) -> Path:
    """The path of `lmplz` or `build_binary`: from `bin_dir` when given, else the venv's bin, else PATH."""
    if bin_dir is not None:
        path = Path(bin_dir) / name
        if _executable(path):
            return path
        raise ThresherError(f"--kenlm-bin {bin_dir}: no executable KenLM {name} there; {BUILD_HINT}")
    path = default_bin_dir() / name
    if _executable(path):
        return path
    found = shutil.which(name)
    if found:
        return Path(found)
    raise ThresherError(
        f"KenLM's {name} is not installed (not in {default_bin_dir()} nor on PATH); {BUILD_HINT}"
    )


def _last_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    # lmplz ends a failure with the exception text, after a progress bar of asterisks.
    lines = [ln for ln in lines if set(ln) - set("*-0123456789% ")]
    return lines[-1][:300] if lines else ""


def run_lmplz(
    token_files: Sequence[Path],
    arpa: Path,
    *,
    order: int,
    memory: str,
    tmp_dir: Path,
    log: Path,
    prune: Sequence[int] = (),
    discount_fallback: bool = True,
    bin_dir: str | Path | None = None,
) -> None:
    """Estimate a modified Kneser-Ney ARPA model from pre-tokenised text files (one sentence per line),
    streamed to lmplz's stdin in the given order. `memory` (-S) and `tmp_dir` (-T) bound what it uses."""
    cmd = [str(find_tool("lmplz", bin_dir)), "-o", str(order), "-S", memory, "-T", str(tmp_dir)]
    cmd += ["--arpa", str(arpa), "--skip_symbols"]  # text that spells "<s>" must not abort the run
    if discount_fallback:
        # Small corpora lack the count-of-counts the discounts are estimated from; this falls back to
        # fixed discounts instead of failing.
        cmd.append("--discount_fallback")
    if prune:
        cmd += ["--prune", *map(str, prune)]
    tmp_dir.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
        assert proc.stdin is not None
        try:
            for path in token_files:
                with open(path, "rb") as f:
                    shutil.copyfileobj(f, proc.stdin, 1 << 20)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # lmplz stopped reading: it failed, and its log says why
        finally:
            code = proc.wait()
    if code != 0:
        raise ThresherError(f"lmplz failed (exit {code}): {_last_line(log) or 'no message'}")


def run_build_binary(
    arpa: Path, binary: Path, *, kind: str, log: Path, bin_dir: str | Path | None = None
) -> None:
    """Convert an ARPA model to KenLM's binary format (`probing`: fastest; `trie`: smallest)."""
    cmd = [str(find_tool("build_binary", bin_dir)), kind, str(arpa), str(binary)]
    with open(log, "wb") as err:
        code = subprocess.run(cmd, stdout=err, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise ThresherError(f"build_binary failed (exit {code}): {_last_line(log) or 'no message'}")


def arpa_ngram_counts(arpa: Path) -> dict[int, int]:
    """The `ngram N=count` lines of an ARPA header."""
    counts: dict[int, int] = {}
    with open(arpa, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("ngram "):
                order, _, count = line[6:].partition("=")
                counts[int(order)] = int(count)
            elif line.startswith("\\1-grams:"):
                break
    return counts
