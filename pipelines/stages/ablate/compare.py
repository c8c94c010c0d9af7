"""The comparison an ablation ends with: per train set x eval set, the loss over seeds, and the difference
to the baseline set with a paired bootstrap interval over the eval documents."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Cell:
    train: str
    eval: str
    loss_mean: float  # nats per token, mean over seeds
    loss_std: float  # over seeds (0 with one seed)
    perplexity: float  # exp(loss_mean)
    seeds: int
    diff: float | None = None  # loss minus the baseline set's loss on the same eval set (negative: better)
    diff_low: float | None = None  # 95% paired bootstrap interval of `diff`
    diff_high: float | None = None

    def as_json(self) -> dict[str, float | str | int | None]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def token_loss(nll: np.ndarray, tokens: np.ndarray) -> float:
    """Nats per token over documents: summed NLL over summed tokens."""
    return float(nll.sum() / max(int(tokens.sum()), 1))


def compare(
    losses: dict[tuple[str, str], list[np.ndarray]],
    tokens: dict[str, np.ndarray],
    train_sets: list[str],
    resamples: int,
    seed: int,
) -> list[Cell]:
    """`losses[(train, eval)]`: per seed, the summed NLL of every eval document (same documents and, with
    one shared tokenizer, the same token counts `tokens[eval]` for every model). The first train set is
    the baseline. The bootstrap resamples documents, the same draw for both sets (paired), with the NLL
    averaged over seeds."""
    baseline = train_sets[0]
    rng = np.random.default_rng(seed)
    cells = []
    for (train, eval_name), per_seed in losses.items():
        count = tokens[eval_name]
        seed_losses = np.array([token_loss(nll, count) for nll in per_seed])
        cell = Cell(
            train,
            eval_name,
            float(seed_losses.mean()),
            float(seed_losses.std(ddof=1)) if len(seed_losses) > 1 else 0.0,
            float(np.exp(seed_losses.mean())),
            len(seed_losses),
        )
        if train != baseline:
            mine = np.mean(per_seed, axis=0)
            base = np.mean(losses[(baseline, eval_name)], axis=0)
            cell.diff = token_loss(mine, count) - token_loss(base, count)
            draws = rng.integers(0, len(count), size=(resamples, len(count)))
            diffs = (mine[draws].sum(axis=1) - base[draws].sum(axis=1)) / np.maximum(
                count[draws].sum(axis=1), 1
            )
            cell.diff_low, cell.diff_high = (float(x) for x in np.percentile(diffs, [2.5, 97.5]))
        cells.append(cell)
    return cells
