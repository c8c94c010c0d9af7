"""What a perplexity scorer returns for a batch of documents."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class DocScores:
    ppl: np.ndarray  # float64 per document; NaN where there was nothing to score (empty text)
    tokens: np.ndarray  # int64 tokens scored per document
