"""nn.MultiheadAttention: heads and embedding prune through its op-by-op twin (prunekit.surgery.mha)."""
import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.surgery.mha import PrunableMultiheadAttention, supported
from prunekit.testing import assert_equivalent, zero_removed_

CONFIGS = [dict(), dict(batch_first=True), dict(kdim=5, vdim=7), dict(bias=False, batch_first=True)]


def _inputs(cfg, batched=True, L=3, S=6, B=2, E=16):
    bf = cfg.get("batch_first", False)
    lead = lambda n: ((B, n) if bf else (n, B)) if batched else (n,)  # noqa: E731
    g = torch.Generator().manual_seed(0)
    return (torch.randn(*lead(L), E, generator=g, dtype=torch.float64),
            torch.randn(*lead(S), cfg.get("kdim", E), generator=g, dtype=torch.float64),
            torch.randn(*lead(S), cfg.get("vdim", E), generator=g, dtype=torch.float64))


CALLS = ["plain", "attn_mask", "float_mask_3d", "key_padding", "both_no_weights", "per_head_weights", "unbatched",
         "causal"]


# causal self-attention needs equal query and key widths: not with kdim/vdim
@pytest.mark.parametrize("cfg,call", [(c, k) for c in CONFIGS for k in CALLS if not (k == "causal" and "kdim" in c)])
def test_twin_equals_torch(cfg, call):
    torch.manual_seed(0)
    m = nn.MultiheadAttention(16, 4, **cfg).double().eval()
    twin = copy.deepcopy(m)
    twin.__class__ = PrunableMultiheadAttention
    q, k, v = _inputs(cfg, batched=call != "unbatched", L=6 if call == "causal" else 3)
    am = torch.rand(3, 6) > 0.7
    am[:, 0] = False
    kpm = torch.zeros(2, 6, dtype=torch.bool)
    kpm[0, -1] = True
    kw = {"plain": {}, "attn_mask": {"attn_mask": am}, "float_mask_3d": {"attn_mask": torch.randn(8, 3, 6).double()},
          "key_padding": {"key_padding_mask": kpm}, "per_head_weights": {"average_attn_weights": False},
          "both_no_weights": {"attn_mask": am, "key_padding_mask": kpm, "need_weights": False}, "unbatched": {},
          "causal": {"is_causal": True, "attn_mask": nn.Transformer.generate_square_subsequent_mask(6).double(),
                     "need_weights": False}}[call]
    if call == "causal":
        k, v = q, q
    a, b = m(q, k, v, **kw), twin(q, k, v, **kw)
    torch.testing.assert_close(b[0], a[0])
    assert (a[1] is None) == (b[1] is None)
    if a[1] is not None:
        torch.testing.assert_close(b[1], a[1])


class SelfAttn(nn.Module):
    """Residual self-attention without norms, so every group is exact."""

    def __init__(self, batch_first=True, **kw):
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=batch_first, **kw)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        return self.head(h).mean(-2)


class CrossAttn(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = nn.Linear(6, 16)
        self.kv = nn.Linear(4, 10)
        self.attn = nn.MultiheadAttention(16, 4, kdim=10, vdim=10)
        self.head = nn.Linear(16, 3)

    def forward(self, x, mem):
        h = self.q(x)
        return self.head(h + self.attn(h, self.kv(mem), self.kv(mem))[0]).mean(0)


def _prune_exact(model, x, **kw):
    model = model.double().eval()
    if isinstance(x, torch.Tensor):
        x = x.double()
    else:
        x = tuple(t.double() for t in x)
    plan = pk.plan(model, x, sparsity=0.5, **kw)
    assert all(type(m) is nn.MultiheadAttention for m in model.modules() if isinstance(m, nn.MultiheadAttention))
    twin = copy.deepcopy(model)
    zero_removed_(twin, plan)
    report = pk.prune_(model, plan)
    assert_equivalent(twin, model, x, atol=1e-10, rtol=1e-8)
    assert report.params_after == plan.predicted["params_after"] == sum(p.numel() for p in model.parameters())
    return model, plan, report


@pytest.mark.parametrize("batch_first", [True, False])
def test_heads_and_embedding_prune_exactly(batch_first):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6) if batch_first else torch.randn(5, 2, 6)
    model, plan, report = _prune_exact(SelfAttn(batch_first), x, ignore=["head"])
    a = model.attn
    assert type(a) is PrunableMultiheadAttention
    assert (a.num_heads, a.head_dim, a.embed_dim, a.kdim, a.vdim) == (2, 4, 8, 8, 8)
    assert a.in_proj_weight.shape == (24, 8) and a.out_proj.weight.shape == (8, 8)
    head_group = next(g for g in plan.groups if g.width == 4)  # the heads are the unit: 4 rows per head
    rows = next(m for m in head_group.members if m["fqn"] == "attn.in_proj_weight")["indices"]
    assert len(rows) == 2 * 3 * 4 and len({r // 4 for r in rows}) == 6  # 2 heads x (q, k, v) x head_dim
    assert report.params_after < 0.5 * report.params_before


def test_cross_attention_with_kdim_vdim():
    torch.manual_seed(0)
    model, _, _ = _prune_exact(CrossAttn(), (torch.randn(3, 2, 6), torch.randn(7, 2, 4)), ignore=["head"])
    a = model.attn
    assert (a.num_heads, a.embed_dim, a.kdim, a.vdim) == (2, 8, 5, 5)
    assert a.q_proj_weight.shape == (8, 8) and a.k_proj_weight.shape == (8, 5)


def test_plan_changes_nothing_and_bias_kv_stays_whole():
    torch.manual_seed(0)
    model = SelfAttn(add_bias_kv=True)
    assert not supported(model.attn)
    x = torch.randn(2, 5, 6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = pk.plan(model, x, sparsity=0.5, ignore=["head"])
    assert type(model.attn) is nn.MultiheadAttention
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any("attn.in_proj_weight" in s["where"] and "MultiheadAttention" in s["reason"] for s in plan.skipped)


def test_transformer_encoder_layer_fast_path_after_pruning():
    """torch's encoder layer has a fused inference path that reads the attention's weights directly;
    a pruned layer must not take it silently wrong."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, batch_first=True, dropout=0.0)
    model = nn.Sequential(nn.Linear(6, 16), layer, nn.Linear(16, 3)).eval()
    x = torch.randn(2, 5, 6)
    twin = copy.deepcopy(model)
    plan = pk.plan(model, x, sparsity=0.5, ignore=["2"])
    for g in plan.groups:  # keep only exact groups (the norms make the embedding approximate)
        if g.approximate:
            g.channels, g.kept = [], g.width
            for m in g.members:
                m["indices"] = []
    zero_removed_(twin, plan)
    pk.prune_(model, plan)
    assert model[1].self_attn.num_heads == 2
    with torch.inference_mode():  # the fused path's conditions
        torch.testing.assert_close(model(x), twin(x), atol=1e-5, rtol=1e-4)
    assert_equivalent(twin, model, x)


def test_save_load_and_onnx_round_trip(tmp_path):
    torch.manual_seed(0)
    model, x = SelfAttn(), torch.randn(2, 5, 6)
    pk.prune_(model, example_inputs=x, sparsity=0.5, ignore=["head"])
    pk.save(model, tmp_path / "m.safetensors")
    loaded = pk.load(tmp_path / "m.safetensors", SelfAttn)
    assert type(loaded.attn) is PrunableMultiheadAttention and loaded.attn.num_heads == 2
    assert_equivalent(model, loaded, x, atol=0, rtol=0)
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "m.onnx"
    torch.onnx.export(model.eval(), (x,), str(path), input_names=["x"], dynamo=False)
    got = ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), model(x), atol=1e-5, rtol=1e-4)


def test_pruned_attention_trains():
    torch.manual_seed(0)
    model, x = SelfAttn(dropout=0.1), torch.randn(4, 5, 6)
    pk.prune_(model, example_inputs=x, sparsity=0.5, ignore=["head"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
