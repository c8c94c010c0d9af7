"""Small pieces every torch-backed selection scorer shares: seeding, safe loading of a local model folder
of any kind (sequence classifier, encoder, causal LM), the files whose digests fingerprint a model, and
length-bucketed batches.

Device choice lives in `scorers/device.py` and locating a model folder (a path or a local HF cache name) in
`scorers/causal_lm.py:resolve_model_dir`; this module builds on both. torch and transformers are imported
inside the functions: stage modules import this one, and the CLI imports every stage at startup.

Loading rules, in one place: nothing is downloaded (`local_files_only`), no code from the folder runs
(`trust_remote_code=False`) and nothing is unpickled (`use_safetensors=True`). A bad folder is a one-line
ThresherError naming it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from thresher.pipelines.engine.errors import ThresherError
from thresher.scorers.causal_lm import resolve_model_dir

# Files in a model folder whose bytes decide what the model computes (config, weights, tokenizer).
_MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".model", ".txt")


def seed_torch(seed: int) -> None:
    """Same seed, same numbers: seeds torch and asks for deterministic kernels where torch has them."""
    import torch

    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # warn_only: a few CUDA kernels have no deterministic variant; refusing to run over them would be
    # worse than a warning. On CPU every kernel used here is deterministic.
    torch.use_deterministic_algorithms(True, warn_only=True)


def quiet_transformers() -> None:
    """No per-load progress bars or "newly initialized" reports: stages log their own one-line events."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def model_files(name_or_path: str) -> list[Path]:
    """The files of a model folder that decide its output, sorted; their digests join task fingerprints,
    so replacing a model re-runs the tasks that used it."""
    folder = resolve_model_dir(name_or_path)
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.endswith(_MODEL_FILE_SUFFIXES)
    )


def load_pretrained(
    loader: Any,
    name_or_path: str,
    what: str,
    *,
    new_weights: tuple[str, ...] = (),
    hint: str = "",
    **kwargs: Any,
) -> Any:
    """`loader.from_pretrained` under the loading rules above; failures become one line naming the folder.

    A checkpoint lacking weights the class needs is refused, unless their names start with one of
    `new_weights` (a head about to be trained): transformers would fill them with random values (a
    backbone loaded as a reward model gets a random scoring head) and every score would be noise."""
    folder = resolve_model_dir(name_or_path)
    model, info = _from_pretrained(
        loader, folder, what, use_safetensors=True, output_loading_info=True, **kwargs
    )
    missing = sorted(k for k in info.get("missing_keys") or [] if not k.startswith(new_weights))
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ThresherError(
            f"{folder}: the {what} checkpoint has no weights for {', '.join(missing[:3])}{more}; "
            f"they would be random{hint}"
        )
    return model


def load_tokenizer(name_or_path: str, what: str) -> Any:
    from transformers import AutoTokenizer

    folder = resolve_model_dir(name_or_path)
    tokenizer = _from_pretrained(AutoTokenizer, folder, f"{what} tokenizer")
    if len(tokenizer) < 16:
        # DeBERTa's sentencepiece tokenizer falls back to its 7 special tokens when spm.model cannot be
        # read (no protobuf/sentencepiece): every text would become [UNK]s. Refuse instead of scoring noise.
        raise ThresherError(
            f"{folder}: the {what} tokenizer has only {len(tokenizer)} tokens; its vocabulary file did not "
            "load (DeBERTa needs the `sentencepiece` and `protobuf` packages)"
        )
    return tokenizer


def _from_pretrained(loader: Any, folder: Path, what: str, **kwargs: Any) -> Any:
    try:
        return loader.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False, **kwargs)
    except (OSError, ValueError, KeyError, TypeError, ImportError) as exc:
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ThresherError(f"{folder}: cannot load the {what}: {reason}") from None


def length_batches(lengths: Sequence[int] | np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices in batches of similar length (longest first), so a batch pads to its own longest row.

    The sort is stable, so equal lengths keep input order: the same rows give the same batches, padded
    shapes and floating-point results on every run."""
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int, left: bool = False) -> tuple[Any, Any]:
    """(input_ids, attention_mask) long tensors for token rows padded to the longest; `left` for
    generation, where every row's next token must sit in the last column."""
    import torch

    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if not row:
            continue
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(list(row), dtype=torch.long)
        mask[i, span] = 1
    return ids, mask
