import copy

import pytest
import torch

import prunekit as pk
from prunekit.testing import assert_equivalent, models, output_tensors, zero_removed_


@pytest.mark.parametrize("name", sorted(models()))
def test_every_canonical_model_runs_and_has_a_prunable_group(name):
    model, x = models()[name]()
    out = output_tensors(model(x))
    assert out and all(torch.isfinite(t).all() for t in out)
    assert len(pk.inspect(model, x).groups) >= 1


def test_assert_equivalent_detects_a_difference():
    model, x = models()["chain"]()
    twin = copy.deepcopy(model)
    assert_equivalent(model, twin, x)
    with torch.no_grad():
        twin.fc.bias += 1e-2
    with pytest.raises(AssertionError):
        assert_equivalent(model, twin, x)


def test_zero_removed_zeroes_exactly_the_planned_slices():
    model, x = models()["chain"]()
    plan = pk.plan(model, x, sparsity=0.5)
    twin = copy.deepcopy(model)
    zero_removed_(twin, plan)
    g = next(g for g in plan.groups if g.members[0]["fqn"] == "conv1.weight")
    w = twin.conv1.weight
    assert (w[g.channels] == 0).all()
    keep = [i for i in range(8) if i not in g.channels]
    assert torch.equal(w[keep], model.conv1.weight[keep])
    assert (twin.conv2.weight[:, g.channels] == 0).all()
