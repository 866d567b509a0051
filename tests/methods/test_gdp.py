"""GDP: one global mask, re-estimated during training; masked filters keep learning and can come back."""
import torch

import prunekit as pk
from prunekit.methods import RunContext
from prunekit.methods._filter_common import cut_to_target
from prunekit.methods.gdp import dynamic_mask_callback


def _setup():
    data = pk.data.load("fashion-mnist", batch_size=64, subset=(1500, 500), augment=False, val_fraction=0.0)
    torch.manual_seed(0)
    model = pk.models.create("vgg-small", width=0.25)
    return data, model, RunContext(model=model, example_inputs=data.example_inputs(2), target="macs=0.5")


def test_masked_filters_get_gradients_of_the_masked_network():
    conv = torch.nn.Conv2d(1, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 0.01]).view(2, 1, 1, 1))
    from prunekit.methods._regularizers import DynamicFilterMask

    cb = DynamicFilterMask({"c": conv}, n_keep=1)
    assert cb.masks["c"].tolist() == [True, False]
    x = torch.ones(1, 1, 1, 1)
    cb.on_batch_start(None)
    out = conv(x)
    assert out.flatten().tolist() == [1.0, 0.0]  # the forward uses the masked filter
    out.sum().backward()
    cb.on_after_backward(None)
    assert conv.weight.detach().flatten().tolist() == [1.0, 0.009999999776482582]  # dense weights are back
    assert conv.weight.grad.flatten().tolist() == [1.0, 1.0]  # and the masked one still has its gradient


def test_dynamic_global_mask_flips_and_keeps_the_global_budget():
    # entry checks (a)+(b), scaled: vgg-small at width 0.25, 1.5k Fashion-MNIST images, 1 epoch at lr 0.1,
    # the global mask re-estimated every 2 steps with the L2 saliency (the entry: L1, every 50 steps over 3
    # epochs of 10k images). Calibration of this setup: 7 flips with L2; L1 gives none in so few steps.
    data, model, ctx = _setup()
    cb = dynamic_mask_callback(model, ctx, update_every=2, saliency="l2")
    n_keep = cb.n_keep
    pk.fit(model, data.train, pk.TrainConfig(epochs=1, lr=0.1, progress=False), callbacks=[cb])
    kept = {f: int(m.sum()) for f, m in cb.masks.items()}
    widths = {f: len(m) for f, m in cb.masks.items()}
    assert sum(kept.values()) == n_keep  # (a) exactly the global budget
    assert len({round(kept[f] / widths[f], 3) for f in kept}) > 1  # per-layer fractions are not uniform
    assert cb.flips >= 1  # (b) at least one filter came back
    cb.apply()
    scores = {}
    for f, m in cb.layers.items():
        s = cb.saliency(m.weight.detach())
        s[~cb.masks[f]] = -1.0
        scores[f] = s
    info = cut_to_target(model, ctx, scores, "global")
    assert info["kept_macs_fraction"] <= 0.5
    assert all(info["widths"][f] <= kept[f] for f in kept)  # every masked filter was cut


def test_static_mask_never_flips():
    data, model, ctx = _setup()
    cb = dynamic_mask_callback(model, ctx, update_every=4, static=True)
    first = {f: m.clone() for f, m in cb.masks.items()}
    pk.fit(model, data.train, pk.TrainConfig(epochs=1, lr=0.05, progress=False), callbacks=[cb])
    assert cb.flips == 0 and all(torch.equal(first[f], cb.masks[f]) for f in first)
