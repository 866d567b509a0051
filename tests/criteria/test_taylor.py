import numpy as np
import torch
from torch import nn

from prunekit.criteria import ChannelView, get_criterion, score_member, select_lowest


def _view(w, g, role="producer"):
    return ChannelView("m.weight", 0, role, np.arange(w.shape[0]), w, grad=g)


def test_taylor_oracle_differs_from_magnitude():
    # row 0 has large weights whose first-order terms cancel; row 1 small weights with large gradients
    w = torch.tensor([[1.0, 1.0], [0.1, 0.1]])
    g = torch.tensor([[0.1, -0.1], [2.0, 2.0]])
    t = score_member(get_criterion("taylor"), _view(w, g))
    a = score_member(get_criterion("taylor-act"), _view(w, g))
    np.testing.assert_allclose(t, [0.0, 0.4 ** 2], atol=1e-12)
    np.testing.assert_allclose(a, [0.0, 1.0], atol=1e-12)  # |0|, |0.4| scaled to unit l2 norm
    assert select_lowest(t, 1).tolist() == [0]
    assert select_lowest(score_member(get_criterion("l1"), _view(w, g)), 1).tolist() == [1]


def test_taylor_act_unit_norm_and_squared_relation():
    g = torch.Generator().manual_seed(1)
    w, gr = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    a = score_member(get_criterion("taylor-act"), _view(w, gr))
    t = score_member(get_criterion("taylor"), _view(w, gr))
    assert abs(np.linalg.norm(a) - 1) < 1e-12
    np.testing.assert_allclose(t, ((w * gr).sum(1).double() ** 2).numpy(), rtol=1e-6)


def test_weight_identity_equals_activation_times_gradient():
    # sum_{o,k} W[o,c,k] dL/dW[o,c,k] == sum_{n,pos} a[n,c,pos] dL/da[n,c,pos] for a padded strided conv
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1, stride=2).double()
    a = torch.randn(5, 3, 7, 7, dtype=torch.float64, requires_grad=True)
    loss = conv(a).sin().sum()
    ga, gw = torch.autograd.grad(loss, [a, conv.weight])
    by_hooks = (a * ga).sum((0, 2, 3)).abs()  # Molchanov 2017 up to the 1/(N*M) constant
    rows = conv.weight.detach().movedim(1, 0).reshape(3, -1)
    grows = gw.movedim(1, 0).reshape(3, -1)
    view = ChannelView("c.weight", 1, "consumer", np.arange(3), rows, grad=grows)
    got = score_member(get_criterion("taylor-act"), view)
    np.testing.assert_allclose(got, (by_hooks / by_hooks.norm()).detach().numpy(), rtol=1e-9)


def test_taylor_squares_each_batch_before_averaging():
    # channel 0: the two batches' first-order terms are +1 and -1 (sum 0, but each batch says "important");
    # channel 1: +0.5 twice. Squared per batch: [1, 0.25]; squared after summing: [0, 1]
    w = torch.tensor([[1.0], [1.0]])
    b1, b2 = torch.tensor([[1.0], [0.5]]), torch.tensor([[-1.0], [0.5]])
    view = ChannelView("m.weight", 0, "producer", np.arange(2), w, grad=b1 + b2, grad_batches=[b1, b2])
    np.testing.assert_allclose(score_member(get_criterion("taylor"), view), [1.0, 0.25], atol=1e-12)
    assert select_lowest(score_member(get_criterion("taylor"), view), 1).tolist() == [1]
    summed = ChannelView("m.weight", 0, "producer", np.arange(2), w, grad=b1 + b2)
    assert select_lowest(score_member(get_criterion("taylor"), summed), 1).tolist() == [0]


def test_engine_passes_one_gradient_per_calibration_batch():
    from prunekit.api import score_groups
    from prunekit.graph import build_graph

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    calib = [(torch.randn(5, 4), torch.randint(0, 2, (5,))) for _ in range(3)]
    graph = build_graph(model, calib[0][0])
    (scores,) = [s for s in score_groups(model, graph, "taylor", calib=calib) if len(s) == 3]
    # by hand: per member, per batch b: (sum over the channel's entries of w * dL_b/dw)^2, averaged over
    # batches; the group score is the mean over the members of each member's scores divided by their mean
    per_batch = []
    for x, y in calib:
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        per_batch.append(torch.stack([(model[0].weight * model[0].weight.grad).sum(1),
                                      model[0].bias * model[0].bias.grad,
                                      (model[2].weight * model[2].weight.grad).sum(0)]).detach().double())
    members = torch.stack(per_batch).pow(2).mean(0)  # [3 members, 3 channels]
    expected = (members / members.mean(1, keepdim=True)).mean(0)
    np.testing.assert_allclose(scores, expected.numpy(), rtol=1e-6)
    summed = torch.stack(per_batch).sum(0).pow(2)
    assert not np.allclose(scores, (summed / summed.mean(1, keepdim=True)).mean(0).numpy(), rtol=1e-3)
