"""The Gumbel-softmax choice among registered criteria (LFPC's sampler), by hand."""
import pytest
import torch

from prunekit.criteria.choice import CriterionChoice, gumbel_softmax, keep_mask
from prunekit.errors import ConfigError


def _planted():
    """Four corners around (25, 25) and a filter at the centre: the centre is the geometric median (FPGM removes
    it first) but not the smallest norm (the corner (20, 20) is)."""
    return torch.tensor([[20.0, 20.0], [30.0, 20.0], [20.0, 30.0], [30.0, 30.0], [25.0, 25.0]])


def test_the_geometric_median_criterion_ranks_the_filter_at_the_median_lowest_and_norms_do_not():
    masks = CriterionChoice(("l1", "l2", "fpgm")).masks(_planted(), 1)
    assert masks[2].tolist() == [1, 1, 1, 1, 0]  # fpgm: the centre goes
    assert masks[0].tolist() == masks[1].tolist() == [0, 1, 1, 1, 1]  # l1 / l2: the smallest corner goes


def test_the_mixed_mask_and_its_gradient_on_the_logits_by_hand():
    c = CriterionChoice(("l1", "fpgm"), init=[0.3, -0.2])
    masks = CriterionChoice(("l1", "fpgm")).masks(_planted(), 1)
    gen = torch.Generator().manual_seed(3)
    w = gumbel_softmax(c.logits.detach(), 0.5, torch.Generator().manual_seed(3))
    mixed = c.mixed(masks, 0.5, gen)
    assert mixed.tolist() == pytest.approx((w[0] * masks[0] + w[1] * masks[1]).tolist())
    cost = torch.tensor([1.0, 0.0, 0.0, 0.0, 3.0])
    (mixed * cost).sum().backward()  # s_k = masks[k] . cost; dL/dlogit_k = w_k (s_k - w . s) / tau
    s = masks @ cost
    expect = w * (s - (w * s).sum()) / 0.5
    assert c.logits.grad.tolist() == pytest.approx(expect.tolist(), rel=1e-5)
    assert c.logits.grad[1] < 0 < c.logits.grad[0]  # fpgm drops the costly centre: descent raises its logit


def test_keep_mask_breaks_ties_by_index_and_a_single_criterion_or_a_data_criterion_is_refused():
    assert keep_mask(torch.tensor([1.0, 1.0, 2.0]), 1).tolist() == [0.0, 1.0, 1.0]
    with pytest.raises(ConfigError, match="at least two"):
        CriterionChoice(("l1",))
    with pytest.raises(ConfigError, match="needs"):
        CriterionChoice(("l1", "taylor")).masks(_planted(), 1)
