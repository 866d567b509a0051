import numpy as np
import pytest
import torch

from prunekit.criteria import (CRITERIA, ChannelView, channel_rows, get_criterion, normalise, reduce_scores,
                               register_criterion, score_member, select_lowest)
from prunekit.errors import ConfigError


def _view(w, fqn="w"):
    return ChannelView(fqn, 0, "producer", np.arange(w.shape[0]), w)


def test_l1_l2_differ_by_hand():
    # row 0: [3, 0, 0] -> l1 3, l2 3; row 1: [1.5, 1.5, 1.5] -> l1 4.5, l2 2.598
    w = torch.tensor([[3.0, 0.0, 0.0], [1.5, 1.5, 1.5]])
    l1 = score_member(get_criterion("l1"), _view(w))
    l2 = score_member(get_criterion("l2"), _view(w))
    np.testing.assert_allclose(l1, [3.0, 4.5])
    np.testing.assert_allclose(l2, [3.0, np.sqrt(3 * 1.5 ** 2)])
    assert select_lowest(l1, 1).tolist() == [0] and select_lowest(l2, 1).tolist() == [1]


def test_random_is_seeded_and_uniform():
    w = torch.zeros(100, 2)
    a = score_member(get_criterion("random"), _view(w))
    b = score_member(get_criterion("random"), _view(w))
    np.testing.assert_array_equal(a, b)
    assert 0.3 < a.mean() < 0.7 and len(np.unique(a)) == 100


def test_channel_rows_gathers_head_positions():
    t = torch.arange(12.0).reshape(6, 2)  # 3 heads of 2 rows each, head order 2, 0, 1
    chans, rows = channel_rows(t, 0, np.array([2, 2, 0, 0, 1, 1]))
    assert chans.tolist() == [0, 1, 2]
    assert rows.tolist() == [[4, 5, 6, 7], [8, 9, 10, 11], [0, 1, 2, 3]]
    chans, rows = channel_rows(t, 1, np.array([-1, 0]))
    assert chans.tolist() == [0] and rows.shape == (1, 6)


def test_reduction_group_vs_producer():
    class M:
        def __init__(self, role):
            self.role = role

    prod = (M("producer"), np.array([0, 1]), np.array([1.0, 3.0]))
    cons = (M("consumer"), np.array([0, 1]), np.array([3.0, 1.0]))
    np.testing.assert_allclose(reduce_scores(2, [prod, cons], "producer"), [0.5, 1.5])
    np.testing.assert_allclose(reduce_scores(2, [prod, cons], "group"), [1.0, 1.0])
    np.testing.assert_allclose(normalise(np.array([1.0, 3.0]), "max"), [1 / 3, 1.0])
    with pytest.raises(ConfigError, match="reduce='x'"):
        reduce_scores(2, [prod], "x")


@pytest.mark.parametrize("name", CRITERIA.names())
def test_every_registered_weight_criterion_returns_one_score_per_channel(name):
    spec = get_criterion(name)
    if spec.needs:
        pytest.skip("data-driven criteria are exercised through pk.plan with calib")
    w = torch.randn(5, 7)
    try:
        s = score_member(spec, _view(w))
    except ConfigError as e:  # a criterion may require a context it documents (e.g. network-wide NISP)
        assert "nisp_context" in str(e) or "needs" in str(e)
        return
    assert s.shape == (5,) and np.isfinite(s).all()


def test_registry_validates_needs_and_wrong_length():
    with pytest.raises(ConfigError, match="unknown need"):
        register_criterion("bad-need", needs=("hessian",))(lambda v: v.weight[:, 0])
    register_criterion("test-short")(lambda v: v.weight[:1, 0])
    try:
        with pytest.raises(ConfigError, match="returned 1 scores for 3 channels"):
            score_member(get_criterion("test-short"), _view(torch.ones(3, 2)))
    finally:
        CRITERIA._items.pop("test-short")


@pytest.mark.parametrize("name", ["l1", "l2", "random"])
def test_fast_path_equals_the_view_function(name):
    spec = get_criterion(name)
    t = torch.randn(6, 4, 3)
    channel = np.array([2, 0, -1, 1, 0, 2])  # channel 0 and 2 span two positions, one position is fixed
    for dim in (0,):
        chans, rows = channel_rows(t, dim, channel)
        view = ChannelView("x.weight", dim, "producer", chans, rows)
        slow = score_member(spec, view)
        fchans, fast = spec.fast(t, dim, channel, {"fqn": "x.weight", "seed": 0})
        assert fchans.tolist() == chans.tolist()
        np.testing.assert_allclose(fast, slow, rtol=1e-6)
    t2 = torch.randn(3, 5)
    ch = np.array([0, 0, 1, 1, 2])
    chans, rows = channel_rows(t2, 1, ch)
    np.testing.assert_allclose(spec.fast(t2, 1, ch, {"fqn": "y", "seed": 0})[1],
                               score_member(spec, ChannelView("y", 1, "consumer", chans, rows)), rtol=1e-6) \
        if name != "random" else None
    assert len(spec.fast(t2, 1, ch, {"fqn": "y", "seed": 0})[1]) == 3


def test_an_integer_buffer_in_a_group_scores_zero_instead_of_failing():
    # Hugging Face position ids (int64) can be coupled to a width-1 group; the norm kernels refuse integers
    import numpy as np
    import torch

    from prunekit.criteria._base import position_sums

    ids = torch.arange(512).view(1, 512)
    chans, sums = position_sums(ids, 0, np.zeros(1, dtype=np.int64), "l1")
    assert chans.tolist() == [0] and sums.tolist() == [0.0]
    w = torch.tensor([[1.0, -2.0], [3.0, 0.0]])
    chans, sums = position_sums(w, 0, np.arange(2), "l1")
    assert sums.tolist() == [3.0, 3.0]  # floating tensors are unchanged
