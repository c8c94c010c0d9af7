"""fastText classifiers: train a supervised model, load one (ours, or e.g. lid.176.bin), predict in batches.

The package is `fasttext-wheel==0.9.2`: on this project's machines it trains reproducibly with `thread=1`
and a fixed seed, where the numpy-2 builds were seen to abort training at random with "Encountered NaN".
Its Python wrapper has two prediction paths that are wrong under numpy 2, so this module calls the
compiled binding (`model.f.predict`) one line at a time instead:

- `FastText.predict(str)` ends in `np.array(probs, copy=False)`, which numpy 2 refuses to do.
- `FastText.predict(list)` (the binding's `multilinePredict`) returns the right labels but probability
  arrays in which every element repeats the first one, so the probability of any label but the top one
  is wrong. `tests/test_quality.py` checks that our path sums to 1 over a model's labels.

`model.f.predict` returns plain (probability, label) tuples, runs at the same speed as the batched call,
and needs no numpy. Model files are fastText's own .bin/.ftz format; nothing is ever unpickled.
"""

from __future__ import annotations

import functools
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.pipelines.engine import storage
from thresher.pipelines.engine.errors import ThresherError, UsageError
from thresher.pipelines.text.normalize import separator

LABEL_PREFIX = "__label__"
MODEL_FILE = "model.bin"  # what `thresher quality train` writes into its output folder


@dataclass(frozen=True)
class TrainSettings:
    """fastText supervised-training hyperparameters; `thread` is always 1, so a seed fixes the model."""

    epoch: int = 10
    lr: float = 0.5
    dim: int = 32
    word_ngrams: int = 2
    min_count: int = 1
    bucket: int = 200_000
    seed: int = 0


def fasttext_lines(texts: pa.Array | pa.ChunkedArray) -> list[str]:
    """Texts as fastText input lines: newlines become spaces (fastText reads one line per example) and
    each line ends in "\\n", as fastText's own predict and training files do, so the end-of-line token it
    learned in training is there at prediction time too."""
    texts = pc.replace_substring(pc.fill_null(texts, ""), "\n", " ")
    return pc.binary_join_element_wise(
        texts, separator("", texts.type), separator("\n", texts.type)
    ).to_pylist()


def training_line(label: str, text_line: str) -> str:
    return f"{LABEL_PREFIX}{label} {text_line}"


def clean_label(value: str) -> str:
    """A label as fastText can hold it: one token, no whitespace."""
    return "_".join(str(value).split()) or "_"


class FastTextModel:
    """A loaded fastText supervised model."""

    def __init__(self, raw: Any, path: Path | None = None) -> None:
        self._raw = raw
        self._predict = raw.f.predict
        self.path = path
        self.labels = [label.removeprefix(LABEL_PREFIX) for label in raw.get_labels()]

    @classmethod
    def load(cls, path: Path) -> FastTextModel:
        """Load a .bin/.ftz model. A worker scoring many shards loads each model file once."""
        path = storage.location(path)
        if not path.is_file():
            raise UsageError(f"{path}: model file does not exist")
        local = storage.local_file(path)  # fastText opens files by name; a remote model is fetched once
        stat = local.stat()
        return _load_cached(str(local.resolve()), stat.st_mtime_ns, stat.st_size)

    def save(self, path: Path) -> None:
        self._raw.save_model(str(path))

    def require_label(self, label: str, option: str = "--label") -> None:
        if label not in self.labels:
            known = ", ".join(self.labels)
            raise UsageError(
                f"{self.path}: model has no label '{label}' (its labels: {known}); pass {option}"
            )

    def probabilities(self, lines: list[str], label: str) -> np.ndarray:
        """P(label) for each line (from `fasttext_lines`), as float32 in [0, 1]."""
        wanted = LABEL_PREFIX + label
        predict = self._predict
        out = np.zeros(len(lines), dtype=np.float32)
        for i, line in enumerate(lines):
            # k=-1: every label, so the wanted one is there even when it is not the most likely.
            for prob, name in predict(line, -1, 0.0, "replace"):
                if name == wanted:
                    out[i] = prob
                    break
        # fastText adds a small epsilon before its log/exp round trip, so a sure prediction can read 1.00001.
        return np.clip(out, 0.0, 1.0, out=out)

    def top_labels(self, lines: list[str]) -> tuple[list[str | None], np.ndarray]:
        """The most likely label of each line (without the __label__ prefix) and its probability."""
        predict = self._predict
        labels: list[str | None] = []
        probs = np.zeros(len(lines), dtype=np.float32)
        for i, line in enumerate(lines):
            best = predict(line, 1, 0.0, "replace")
            if best:
                probs[i] = best[0][0]
                labels.append(best[0][1].removeprefix(LABEL_PREFIX))
            else:
                labels.append(None)
        return labels, np.clip(probs, 0.0, 1.0, out=probs)


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime_ns: int, size: int) -> FastTextModel:
    # mtime and size are in the key so a model retrained at the same path is read again.
    import fasttext.FastText as ft  # heavy import: only when a model is used

    problem = _layout_problem(Path(path))
    if problem:
        raise ThresherError(f"{path}: not a fastText model (.bin or .ftz): {problem}")
    try:
        # _FastText directly: `fasttext.load_model` only adds a deprecation warning on stderr.
        raw = ft._FastText(model_path=path)
    except ValueError as exc:
        raise ThresherError(f"{path}: not a fastText model (.bin or .ftz): {exc}") from None
    if raw.f.getArgs().model.name != "supervised":
        raise ThresherError(f"{path}: a fastText word-vector model, not a supervised classifier")
    return FastTextModel(raw, Path(path))


# fastText's file format (src/fasttext.cc, args.cc, dictionary.cc, densematrix.cc, quantmatrix.cc,
# productquantizer.cc): little-endian, no padding.
_MAGIC = 793712314
_MAX_VERSION = 12
# dim ws epoch minCount neg wordNgrams loss model bucket minn maxn lrUpdateRate, then t
_ARGS = struct.Struct("<12id")
_DICTIONARY = struct.Struct("<iiiqq")  # size nwords nlabels ntokens pruneidx_size
_WORD_TAIL = 9  # after a word's terminating NUL: int64 count, int8 type
_KSUB = 256  # centroids per product-quantizer subspace


class _Short(Exception):
    """The file ends before the part its header describes."""


class _Cursor:
    def __init__(self, data: mmap.mmap, size: int) -> None:
        self.data, self.size, self.pos = data, size, 0

    def skip(self, n: int, what: str) -> None:
        if n < 0 or n > self.size - self.pos:
            raise _Short(f"{what} needs {n:,} bytes, {self.size - self.pos:,} are left")
        self.pos += n

    def read(self, layout: str | struct.Struct, what: str) -> tuple[Any, ...]:
        layout = struct.Struct(layout) if isinstance(layout, str) else layout
        start = self.pos
        self.skip(layout.size, what)
        return layout.unpack_from(self.data, start)


def _layout_problem(path: Path) -> str | None:
    """Why the file cannot be a fastText model, or None when the layout its header describes fills the
    file exactly.

    fastText trusts every count it reads: a dictionary larger than the file has it append end-of-file
    bytes to one word forever, memory growing without end, and a matrix shape past the file's end is one
    huge allocation. So each count is checked against the bytes left before fastText sees the file.
    """
    size = path.stat().st_size
    if size < 8:
        return f"{size} bytes, too short for a header"
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        cur = _Cursor(data, size)
        try:
            magic, version = cur.read("<ii", "the header")
            if magic != _MAGIC:
                return "wrong magic number"
            if not 0 <= version <= _MAX_VERSION:
                return f"file format version {version}; fastText 0.9.2 reads versions up to {_MAX_VERSION}"
            dim, *_, loss, model, bucket, _minn, _maxn, _lr_update, _t = cur.read(_ARGS, "the settings")
            if not (dim > 0 and 1 <= loss <= 4 and 1 <= model <= 3 and bucket >= 0):
                return f"impossible settings (dim {dim}, loss {loss}, model {model}, bucket {bucket})"
            words, nwords, nlabels, _ntokens, pruned = cur.read(_DICTIONARY, "the dictionary header")
            if nwords < 0 or nlabels < 0 or nwords + nlabels != words:
                return f"impossible dictionary ({nwords:,} words + {nlabels:,} labels != {words:,})"
            # Each entry is at least its NUL and its tail: a huge count fails here, before the walk.
            least, left = words * (1 + _WORD_TAIL), size - cur.pos
            if least > left:
                raise _Short(f"{words:,} dictionary entries need {least:,} bytes or more, {left:,} are left")
            find = data.find
            for _ in range(words):
                end = find(b"\0", cur.pos)
                if end < 0:
                    raise _Short("the file ends inside the dictionary")
                cur.pos = end + 1
                cur.skip(_WORD_TAIL, "a dictionary entry")
            cur.skip(max(pruned, 0) * 8, "the pruning index")
            (quant_input,) = cur.read("<?", "a flag")
            _matrix(cur, quant_input, "input")
            (quant_output,) = cur.read("<?", "a flag")
            _matrix(cur, quant_input and quant_output, "output")
        except _Short as exc:
            return f"truncated or corrupt: {exc}"
        if cur.pos != size:
            return f"truncated or corrupt: {size - cur.pos:,} bytes after the end of the model"
    return None


def _matrix(cur: _Cursor, quantized: bool, name: str) -> None:
    if not quantized:
        rows, cols = cur.read("<qq", f"the {name} matrix shape")
        if rows < 0 or cols < 0:
            raise _Short(f"the {name} matrix has shape {rows} x {cols}")
        cur.skip(rows * cols * 4, f"the {name} matrix")
        return
    with_norms, rows, _cols, codes = cur.read("<?qqi", f"the {name} matrix header")
    cur.skip(codes, f"the {name} matrix codes")
    _quantizer(cur, name)
    if with_norms:
        cur.skip(rows, f"the {name} matrix norm codes")
        _quantizer(cur, name)


def _quantizer(cur: _Cursor, name: str) -> None:
    dim, _subspaces, _sub_dim, _last_sub_dim = cur.read("<iiii", f"the {name} quantizer header")
    cur.skip(dim * _KSUB * 4, f"the {name} quantizer centroids")


def train(train_file: Path, settings: TrainSettings) -> FastTextModel:
    """Train a supervised model on a fastText-format file ("__label__x text" per line)."""
    import fasttext

    try:
        raw = fasttext.train_supervised(
            input=str(train_file),
            epoch=settings.epoch,
            lr=settings.lr,
            dim=settings.dim,
            wordNgrams=settings.word_ngrams,
            minCount=settings.min_count,
            bucket=settings.bucket,
            seed=settings.seed,
            thread=1,  # more threads race on the shared weights (Hogwild), so results would vary by run
            verbose=0,
        )
    except RuntimeError as exc:
        raise ThresherError(f"fastText training failed: {exc} (try a lower --lr)") from None
    return FastTextModel(raw)


def resolve_model_path(value: str, option: str) -> Path:
    """A model file, or a `thresher quality train` output folder holding model.bin."""
    path = storage.location(value)
    if path.is_dir():
        if not (path / MODEL_FILE).is_file():
            raise UsageError(f"{option} {value}: folder has no {MODEL_FILE}; pass the model file itself")
        return path / MODEL_FILE
    if not path.exists():
        raise UsageError(f"{option} {value}: model file does not exist")
    return path
