"""Stage candidate grids, the curriculum and DA-NAS's progressive pruning loop on hand-sized cases."""
import pytest

from prunekit.allocate.progressive import class_curriculum, progressive_prune, stage_blocks, stage_candidates
from prunekit.allocate.search import SearchSpace
from prunekit.errors import ConfigError


def test_stage_candidates_give_one_multiplier_per_contiguous_block():
    space = SearchSpace.of(["a", "b", "c", "d"], [8, 8, 16, 16])
    configs, widths = stage_candidates(space, 2, [0.5, 1.0])
    assert stage_blocks(4, 2) == [[0, 1], [2, 3]]
    assert configs == [(0.5, 0.5), (0.5, 1.0), (1.0, 0.5), (1.0, 1.0)]
    assert widths == [(4, 4, 8, 8), (4, 4, 16, 16), (8, 8, 8, 8), (8, 8, 16, 16)]
    with pytest.raises(ConfigError, match=r"multipliers=\[0.0, 1.0\]"):
        stage_candidates(space, 2, [0.0, 1.0])


def test_progressive_prune_keeps_the_top_fraction_per_slot_each_stage():
    # stage 0 scores favour high indices, stage 1 low ones: stage 0 keeps {2,3} of 4, stage 1 keeps {2}
    seen = []

    def score(stage, alive):
        seen.append([list(a) for a in alive])
        return [[float(i) if stage == 0 else -float(i) for i in a] for a in alive]

    log = progressive_prune([4, 3], 2, score, keep=0.5, final_keep=1)
    assert seen == [[[0, 1, 2, 3], [0, 1, 2]], [[2, 3], [1, 2]]]
    assert log.alive == [[2], [1]] and log.dropped[0] == [[0, 1], [0]] and log.evaluated == [7, 4]


def test_progressive_prune_refuses_a_score_of_the_wrong_shape():
    with pytest.raises(ConfigError, match="one score per surviving candidate"):
        progressive_prune([3], 1, lambda s, alive: [[1.0]])
    with pytest.raises(ConfigError, match="keep=0 must be in"):
        progressive_prune([3], 1, lambda s, alive: [[1.0] * 3], keep=0)


def test_class_curriculum_takes_the_easiest_classes_first():
    assert class_curriculum([0.3, 0.1, 0.5, 0.2], [1, 2, 4]) == [[1], [1, 3], [0, 1, 2, 3]]
    with pytest.raises(ConfigError, match="must grow"):
        class_curriculum([0.3, 0.1], [2, 1])
