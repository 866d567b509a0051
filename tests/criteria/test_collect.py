"""The one calibration collector (prunekit.criteria.collect): hand-checked statistics, restoration, errors,
and the adapter that returns what the scoring engine's own pass returns."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.criteria.collect import collect, collect_for_scoring, layer_rows
from prunekit.errors import ConfigError
from prunekit.graph import build_graph
from prunekit.testing import models


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _sum_ce(out, y):
    return F.cross_entropy(out, y, reduction="sum")


def test_linear_gram_by_hand_with_and_without_the_bias_column():
    lin = nn.Linear(2, 1)
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    cal = collect(lin, [(x, None)], gram=[""])
    # rows (1, 2) and (3, 4): [[1+9, 2+12], [2+12, 4+16]]
    assert cal.gram[""].tolist() == [[10.0, 14.0], [14.0, 20.0]] and cal.gram_rows[""] == 2
    cal = collect(lin, [(x[:1], None), (x[1:], None)], gram=[""], gram_bias=True)  # batches add up; bias column
    assert cal.gram[""].tolist() == [[10.0, 14.0, 4.0], [14.0, 20.0, 6.0], [4.0, 6.0, 2.0]]
    assert cal.hessian("").tolist() == [[5.0, 7.0, 2.0], [7.0, 10.0, 3.0], [2.0, 3.0, 1.0]]
    assert cal.gram[""].dtype == torch.float64 and cal.gram[""].device.type == "cpu"


def test_conv_gram_is_the_outer_product_of_the_unfolded_patch_and_max_rows_caps_it():
    conv = nn.Conv2d(1, 1, 2, bias=False)
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # one 2x2 patch: one row (1, 2, 3, 4)
    cal = collect(conv, [(x, None), (2 * x, None)], gram=[""], gram_bias=False, max_rows=1)
    p = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    assert torch.equal(cal.gram[""], torch.outer(p, p))  # the second batch is beyond max_rows=1
    assert cal.gram_rows[""] == 1
    # the rows are what the layer multiplies by its weight view
    conv = nn.Conv2d(2, 3, 3, padding=1, stride=2)
    x = torch.randn(2, 2, 6, 6)
    rows = layer_rows(conv, x).float()
    y = rows @ torch.cat([conv.weight.reshape(3, -1), conv.bias[:, None]], 1).T
    torch.testing.assert_close(y, conv(x).permute(0, 2, 3, 1).reshape(-1, 3), atol=1e-5, rtol=1e-5)


def test_channel_stats_count_exact_zeros_sums_and_values():
    m = nn.Sequential(nn.Identity(), nn.ReLU(), nn.Conv2d(2, 2, 1))
    x = torch.tensor([[-1.0, 2.0], [3.0, -4.0], [0.0, 5.0]])
    cal = collect(m[:2], [(x[:2], None), (x[2:], None)], stats=["1"], input_stats=["1"])
    s = cal.stats["1"]  # ReLU output [[0, 2], [3, 0], [0, 5]]: features last on a 2-D tensor
    assert s.zeros.tolist() == [2, 1] and s.count.tolist() == [3, 3]
    assert s.sum.tolist() == [3.0, 7.0] and s.zero_fraction.tolist() == [2 / 3, 1 / 3]
    assert cal.input_stats["1"].abs_sum.tolist() == [4.0, 11.0] and cal.input_stats["1"].zeros.tolist() == [1, 0]
    img = torch.zeros(1, 2, 2, 2)
    img[0, 0, 0, 0] = 4.0  # channel 0 has one non-zero of four, channel 1 none
    cal = collect(m, [(img, None)], input_stats=["2"])
    assert cal.input_stats["2"].zeros.tolist() == [3, 4] and cal.input_stats["2"].mean.tolist() == [1.0, 0.0]


def test_summed_gradient_equals_autograd_over_the_whole_batch():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    cal = collect(m, [(x[:2], y[:2]), (x[2:], y[2:])], param_grads=True, per_batch=True, loss_fn=_sum_ce)
    ref = torch.autograd.grad(_sum_ce(m(x), y), list(m.parameters()))
    for (f, _), g in zip(m.named_parameters(), ref):
        torch.testing.assert_close(cal.grads[f], g, atol=1e-6, rtol=1e-5)
        assert len(cal.batch_grads[f]) == 2
        torch.testing.assert_close(cal.batch_grads[f][0] + cal.batch_grads[f][1], cal.grads[f])
    # only the named parameters when a list is given
    cal = collect(m, [(x, y)], param_grads=["2.bias"], loss_fn=_sum_ce)
    assert list(cal.grads) == ["2.bias"]


def test_output_and_input_gradients_match_autograd_and_an_input_gradient_is_per_reader():
    torch.manual_seed(0)

    class TwoReaders(nn.Module):  # h is read by two layers: each reader gets its own gradient
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(3, 4), nn.Linear(4, 2), nn.Linear(4, 2)

        def forward(self, x):
            h = self.a(x)
            return self.b(h) + 2 * self.c(h)

    m = TwoReaders()
    x, y = torch.randn(5, 3), torch.randint(0, 2, (5,))
    cal = collect(m, [(x, y)], outputs=["a"], inputs=["b", "c"], output_grads=["a"], input_grads=["b", "c"],
                  loss_fn=_sum_ce)
    h = m.a(x)
    logits_b, logits_c = m.b(h), m.c(h)
    g_h, g_b, g_c = torch.autograd.grad(_sum_ce(logits_b + 2 * logits_c, y), [h, logits_b, logits_c])
    torch.testing.assert_close(cal.outputs["a"][0], h.detach())
    torch.testing.assert_close(cal.output_grads["a"][0], g_h)
    torch.testing.assert_close(cal.input_grads["b"][0], g_b @ m.b.weight.detach())
    torch.testing.assert_close(cal.input_grads["c"][0], g_c @ m.c.weight.detach())  # g_c carries the 2
    torch.testing.assert_close(cal.input_grads["b"][0] + cal.input_grads["c"][0], g_h)
    assert cal.calls == ["a", "b", "c"] and cal.batches == 1


def test_raw_tensors_are_capped_and_on_batch_sees_each_batch():
    m = nn.Sequential(nn.Linear(2, 2))
    calib = [(torch.randn(4, 2), None) for _ in range(3)]
    seen = []
    cal = collect(m, calib, outputs=["0"], cap=6, on_batch=lambda b: seen.append(b.outputs["0"][0].shape[0]))
    assert [t.shape[0] for t in cal.outputs["0"]] == [4, 2] and seen == [4, 4, 4]
    cal = collect(m, calib, outputs=["0"], keep=False)
    assert cal.outputs == {}


def test_model_comes_back_as_it_was_even_when_a_batch_raises():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    m.train()
    m[1].eval()  # mixed flags are restored module by module
    m[2].bias.requires_grad_(False)
    sentinel = torch.full_like(m[0].weight, 7.0)
    m[0].weight.grad = sentinel
    flags = [mod.training for mod in m.modules()]
    good = (torch.randn(4, 3), torch.randint(0, 2, (4,)))
    for calib in ([good, "not a pair"], [good, (torch.randn(4, 5), good[1])]):
        with pytest.raises((ConfigError, RuntimeError)):
            collect(m, calib, outputs=["0"], inputs=["2"], output_grads=["0"], input_grads=["2"], gram=["2"],
                    stats=["1"], param_grads=True, watch=["0"], on_input=lambda *a: None)
        assert _hooks(m) == 0
        assert [mod.training for mod in m.modules()] == flags
        assert m[0].weight.grad is sentinel and m[2].weight.grad is None
        assert m[2].bias.requires_grad is False and m[0].weight.requires_grad is True
    before = {k: v.clone() for k, v in m.state_dict().items()}
    collect(m, [good], param_grads=True, stats=["1"])
    assert _hooks(m) == 0 and m[0].weight.grad is sentinel
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # eval: BN statistics untouched


def test_errors_name_calib_and_the_closest_module():
    m = nn.Sequential(nn.Linear(2, 2))
    m.add_module("head", nn.Linear(2, 2))
    with pytest.raises(ConfigError, match=r"calib must yield \(inputs, targets\) pairs, got Tensor"):
        collect(m, [torch.randn(2, 2)])
    with pytest.raises(ConfigError, match=r"calib is empty"):
        collect(m, [])
    with pytest.raises(ConfigError, match=r"calib=None"):
        collect(m, None)
    with pytest.raises(ConfigError, match=r"'haed' is not a module of the model; did you mean 'head'\?"):
        collect(m, [(torch.randn(2, 2), None)], outputs=["haed"])
    with pytest.raises(ConfigError, match=r"'head.wieght' is not a parameter.*did you mean 'head.weight'"):
        collect(m, [(torch.randn(2, 2), None)], param_grads=["head.wieght"])
    grouped = nn.Sequential(nn.Conv2d(2, 2, 3, groups=2))
    with pytest.raises(ConfigError, match=r"Conv2d with groups=1.*groups=2"):  # raised inside the hook
        collect(grouped, [(torch.randn(1, 2, 4, 4), None)], gram=["0"])
    assert _hooks(m) == 0 and _hooks(grouped) == 0


def _reference_collect(model, graph, calib, need_grads, need_acts, per_batch):
    """An independent oracle: the engine's former private collector (plain hooks and autograd, no shared code)."""
    grads, acts, inputs, hooks = {}, {}, {}, []
    named = dict(model.named_modules())
    if need_acts:
        for mf in {m.fqn.rpartition(".")[0] for g in graph.groups for m in g.members}:
            if mf not in named:
                continue

            def hook(mod, args, out, mf=mf):
                if isinstance(out, torch.Tensor):
                    acts.setdefault(mf, []).append(out.detach().cpu())
                t = next((a for a in args if isinstance(a, torch.Tensor)), None)
                if t is not None:
                    inputs.setdefault(mf, []).append(t.detach().cpu())

            hooks.append(named[mf].register_forward_hook(hook))
    params = dict(model.named_parameters())
    training = {m: m.training for m in model.modules()}
    model.eval()
    try:
        for x, y in calib:
            if need_grads:
                for p in params.values():
                    p.grad = None
                out = model(x)
                logits = out if isinstance(out, torch.Tensor) else out[0]
                (logits.float().pow(2).mean() if y is None else torch.nn.functional.cross_entropy(logits, y)).backward()
                for f, p in params.items():
                    if p.grad is not None:
                        g = p.grad.detach().cpu()
                        grads[f] = grads[f] + g if f in grads else g.clone()
                        if per_batch:
                            grads.setdefault(f + "#batches", []).append(g.clone())
            else:
                with torch.no_grad():
                    model(x)
    finally:
        for h in hooks:
            h.remove()
        for p in params.values():
            p.grad = None
        for m, t in training.items():
            m.training = t
    return grads, acts, inputs


@pytest.mark.parametrize("name", ["chain", "residual", "concat", "flatten_linear", "attention", "se", "tied"])
def test_collect_for_scoring_returns_what_the_engine_collects(name):
    torch.manual_seed(0)
    model, x = models()[name]()
    graph = build_graph(model, x)
    calib = [(x, None), (x.clone() if x.dtype.is_floating_point else x, None)]
    covered = []
    for need_grads, need_acts, per_batch in ((True, True, True), (True, False, False), (False, True, False)):
        got = collect_for_scoring(model, graph, calib, None, need_grads, need_acts, per_batch)
        ref = _reference_collect(model, graph, calib, need_grads, need_acts, per_batch)
        covered.append([len(r) for r in ref])
        for a, b in zip(got, ref):
            assert set(a) == set(b)
            for k in b:
                va, vb = (a[k], b[k]) if isinstance(b[k], list) else ([a[k]], [b[k]])
                assert len(va) == len(vb) and all(torch.equal(u, v) for u, v in zip(va, vb))
        assert _hooks(model) == 0
    assert all(covered[0]) and covered[1][0] and covered[2][1]  # grads, outputs and inputs were compared
    with pytest.raises(ConfigError, match="needs calibration data"):
        collect_for_scoring(model, graph, None, None, True, False)
    with pytest.raises(ConfigError, match="calib is empty"):  # the engine's own pass scores nothing silently here
        collect_for_scoring(model, graph, [], None, True, False)
