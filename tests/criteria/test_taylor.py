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


# ---- the papers' whole-group scores (what the taylor-fo / taylor-fm methods rank by) ------------------------
def _fc_bn_fc():
    # h = fc1(x) with fc1 = [1, 1, 0.5]^T; z = BN(h) = gamma * h + beta in eval mode (mean 0, var 1, eps 0,
    # gamma 1, beta (0, 1.5, 1.5)); out = fc2(z) with fc2 = [1, 2, 1]; loss = out summed over the batch, so
    # dL/dz_c = v_c for every example
    model = nn.Sequential(nn.Linear(1, 3, bias=False), nn.BatchNorm1d(3, eps=0.0), nn.Linear(3, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0], [1.0], [0.5]]))
        model[1].weight.fill_(1.0)
        model[1].bias.copy_(torch.tensor([0.0, 1.5, 1.5]))
        model[2].weight.copy_(torch.tensor([[1.0, 2.0, 1.0]]))
    model.eval()
    y = torch.zeros(2, dtype=torch.long)
    return model, [(torch.tensor([[1.0], [2.0]]), y), (torch.tensor([[-1.0], [-1.0]]), y)]


def test_taylor_fo_is_the_squared_gate_after_bn_averaged_over_batches():
    from prunekit.api import score_groups
    from prunekit.criteria.taylor import taylor_fo_scores
    from prunekit.graph import build_graph

    model, calib = _fc_bn_fc()
    graph = build_graph(model, calib[0][0])
    (gid,) = [i for i, g in enumerate(graph.groups) if g.width == 3]
    got = taylor_fo_scores(model, graph, calib, loss_fn=lambda out, t: out.sum())[gid]
    # by hand, per batch: gate term = sum_n z_c v_c = v_c (gamma_c a_c sum(x) + N beta_c)
    # batch 1 (sum x = 3, N = 2): c0 1*(3 + 0) = 3, c1 2*(3 + 3) = 12, c2 1*(1.5 + 3) = 4.5 -> 9, 144, 20.25
    # batch 2 (sum x = -2):       c0 -2,           c1 2*(-2 + 3) = 2, c2 1*(-1 + 3) = 2   -> 4, 4, 4
    np.testing.assert_allclose(got, [6.5, 74.0, 12.125], rtol=1e-9)
    # the paper removes channel 0 first; the old blend (each member's squared term -- fc1's filter, BN's scale
    # and shift, fc2's slice -- mean-normalised and averaged) ranks channel 2 lowest
    old = score_groups(model, graph, "taylor", calib=calib, loss_fn=lambda out, t: out.sum())[gid]
    assert int(np.argmin(got)) == 0 and int(np.argmin(old)) == 2


def test_taylor_fo_without_bn_gates_the_layer_output():
    # no norm in the group: the gate sits on fc1's output, its term is sum over fc1's weight and bias of w*g
    from prunekit.criteria.taylor import gate_members, taylor_fo_scores
    from prunekit.graph import build_graph

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    calib = [(torch.randn(5, 4), torch.randint(0, 2, (5,))) for _ in range(3)]
    graph = build_graph(model, calib[0][0])
    (gid,) = [i for i, g in enumerate(graph.groups) if g.width == 3]
    assert sorted(m.fqn for m in gate_members(model, graph.groups[gid])) == ["0.bias", "0.weight"]
    expected = []
    for x, y in calib:
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        expected.append(((model[0].weight * model[0].weight.grad).sum(1) + model[0].bias * model[0].bias.grad)
                        .detach().double().pow(2))
    got = taylor_fo_scores(model, graph, calib)[gid]
    np.testing.assert_allclose(got, torch.stack(expected).mean(0).numpy(), rtol=1e-6)


def test_taylor_fm_is_per_example_abs_of_the_next_layer_input_term():
    # h = fc1(x) = a x + b, read by fc2 = [1, 1]; loss = out per example, so dL/dh_c = 1.
    # x = (1, -1). c0: a=2, b=0 -> a*g per example (2, -2); c1: a=0, b=1 -> (1, 1).
    # Paper (abs per example, then the mean): (2, 1) -> unit l2 norm (2, 1)/sqrt(5): c1 is the weakest.
    # Summing over the batch before the abs (what weight gradients give) says (0, 2): c0 would go.
    from prunekit.api import score_groups
    from prunekit.criteria.taylor import taylor_fm_scores
    from prunekit.graph import build_graph

    model = nn.Sequential(nn.Linear(1, 2), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[2.0], [0.0]]))
        model[0].bias.copy_(torch.tensor([0.0, 1.0]))
        model[1].weight.fill_(1.0)
    calib = [(torch.tensor([[1.0], [-1.0]]), torch.zeros(2, dtype=torch.long))]
    graph = build_graph(model, calib[0][0])
    (gid,) = [i for i, g in enumerate(graph.groups) if g.width == 2]
    got = taylor_fm_scores(model, graph, calib, loss_fn=lambda out, t: out.sum())[gid]
    np.testing.assert_allclose(got, np.array([2.0, 1.0]) / np.sqrt(5.0), rtol=1e-9)
    old = score_groups(model, graph, "taylor-act", calib=calib, loss_fn=lambda out, t: out.sum())[gid]
    assert int(np.argmin(got)) == 1 and int(np.argmin(old)) == 0


def test_taylor_fm_matches_per_example_hooks_on_a_conv_reader():
    # conv -> BN -> ReLU -> pool -> conv: the map as conv2 reads it, |mean over positions of a * dL_n/da| per
    # example n, averaged over examples, unit l2 norm; computed here with autograd on each example alone
    from prunekit.criteria.taylor import taylor_fm_scores
    from prunekit.graph import build_graph

    torch.manual_seed(0)
    head = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2))
    tail = nn.Sequential(nn.Conv2d(4, 3, 3), nn.Flatten(), nn.Linear(3 * 2 * 2, 5))
    model = nn.Sequential(head, tail).eval()
    with torch.no_grad():
        model[0][1].running_mean.uniform_(-0.2, 0.2)
        model[0][1].bias.uniform_(-0.5, 0.5)
    calib = [(torch.randn(3, 2, 8, 8), torch.randint(0, 5, (3,))) for _ in range(2)]
    graph = build_graph(model, calib[0][0])
    (gid,) = [i for i, g in enumerate(graph.groups) if g.width == 4]
    got = taylor_fm_scores(model, graph, calib)[gid]
    per = []
    for x, y in calib:
        for n in range(len(x)):
            a = head(x[n:n + 1]).detach().requires_grad_(True)
            (g,) = torch.autograd.grad(nn.functional.cross_entropy(tail(a), y[n:n + 1]), a)
            per.append((a * g).mean((0, 2, 3)).abs().detach())
    expected = torch.stack(per).mean(0).double()
    np.testing.assert_allclose(got, (expected / expected.norm()).numpy(), rtol=1e-6)
