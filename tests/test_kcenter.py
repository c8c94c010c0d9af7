"""k-center greedy: one centre per well-separated cluster, a covering radius that never grows, and the
same answer whether the points come in one block, several, or memory-mapped files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from thresher.pipelines.stages.select.kcenter import covering_radius, kcenter_greedy


def clusters(k: int, per: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, dim)) * 20.0
    labels = np.repeat(np.arange(k), per)
    points = (means[labels] + rng.normal(size=(k * per, dim))).astype(np.float32)
    order = rng.permutation(len(points))
    return points[order], labels[order]


@pytest.mark.parametrize("seed", range(5))
def test_one_centre_in_each_well_separated_cluster(seed: int) -> None:
    points, labels = clusters(k=6, per=40, dim=8, seed=seed)
    result = kcenter_greedy([points], 6, seed=seed)
    assert sorted(labels[result.centers].tolist()) == list(range(6))


def test_covering_radius_never_increases_and_matches_brute_force() -> None:
    points, _ = clusters(k=4, per=50, dim=5, seed=1)
    result = kcenter_greedy([points], 60, seed=3)
    assert len(set(result.centers.tolist())) == 60
    assert np.all(np.diff(result.radii) <= 1e-6)
    for j in (0, 3, 10, 59):
        assert result.radii[j] == pytest.approx(covering_radius(points, result.centers[: j + 1]), rel=1e-4)
    # Farthest-point traversal is within twice the optimum: no two centres are closer than the radius.
    chosen = points[result.centers[:10]]
    gaps = np.sqrt(((chosen[:, None] - chosen[None]) ** 2).sum(-1))[np.triu_indices(10, 1)]
    assert gaps.min() >= result.radii[9] - 1e-4


def test_blocks_and_memory_mapped_files_give_the_same_centres(tmp_path: Path) -> None:
    points, _ = clusters(k=5, per=30, dim=6, seed=2)
    whole = kcenter_greedy([points], 12, seed=7)
    parts = [points[:40], points[40:40], points[40:101], points[101:]]
    files = []
    for i, part in enumerate(parts):
        np.save(tmp_path / f"{i}.npy", part)
        files.append(np.load(tmp_path / f"{i}.npy", mmap_mode="r"))
    assert kcenter_greedy(parts, 12, seed=7).centers.tolist() == whole.centers.tolist()
    assert kcenter_greedy(files, 12, seed=7).centers.tolist() == whole.centers.tolist()
    assert kcenter_greedy([points], 12, seed=8).centers[0] != whole.centers[0]


def test_more_centres_than_points_and_duplicates() -> None:
    points = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    result = kcenter_greedy([points], 10, first=0)
    assert sorted(result.centers.tolist()) == [0, 1, 2, 3]
    assert result.radii[-1] == 0.0
    # The exact duplicate of the first centre is picked last: it adds no coverage.
    assert result.centers[-1] == 1
    assert kcenter_greedy([], 3).centers.tolist() == []


def test_chosen_centres_continue_the_traversal() -> None:
    """MoDS's second pass: with the seed set's centres given, the new centres are the ones the traversal
    would have picked next, and they land in the clusters the given centres left uncovered."""
    points, labels = clusters(k=6, per=30, dim=8, seed=4)
    whole = kcenter_greedy([points], 9, seed=2)
    rest = kcenter_greedy([points[:70], points[70:]], 6, chosen=whole.centers[:3].tolist())
    assert rest.centers.tolist() == whole.centers[3:].tolist()
    assert rest.radii.tolist() == pytest.approx(whole.radii[3:].tolist())
    covered = set(labels[whole.centers[:3]].tolist())
    assert set(labels[rest.centers[:3]].tolist()) == set(range(6)) - covered
    assert sorted(kcenter_greedy([points], 10, chosen=range(len(points) - 2)).centers) == [178, 179]
    with pytest.raises(ValueError, match="outside"):
        kcenter_greedy([points], 1, chosen=[len(points)])
