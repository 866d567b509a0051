import os

from prunekit.data.sources import FASHION_DIR

FASHION = os.path.join(FASHION_DIR, "train-images-idx3-ubyte.gz")

import pytest
import torch
from torch import nn

from prunekit.masks import get_masks, sparsify_
from prunekit.methods import RunContext, get_method, load_all
from prunekit.errors import MechanismWarning
from prunekit.methods.deep_compression import decode, encode, huffman_lengths, share_weights_
from prunekit.quantize import kmeans
from prunekit.train import TrainConfig


def test_kmeans_linear_init_and_huffman_lengths():
    c, a = kmeans(torch.tensor([-1.0, -0.9, 0.0, 0.95, 1.0]), 3, init="linear")
    assert c.tolist() == pytest.approx([-0.95, 0.0, 0.975])
    lengths = huffman_lengths({0: 45, 1: 13, 2: 12, 3: 16, 4: 9, 5: 5})
    assert sum(45 * 0 + lengths[s] * n for s, n in {0: 45, 1: 13, 2: 12, 3: 16, 4: 9, 5: 5}.items()) == 224


def test_encode_decode_round_trip_and_huffman_beats_fixed_width():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Conv1d(1, 4, 3))
    sparsify_(model, sparsity=0.9)
    books = share_weights_(model, bits_fc=4, bits_conv=5)
    assert len(torch.unique(model[0].weight.detach()[get_masks(model)["0.weight"]])) <= 16
    blob = encode(model, books)
    fixed = encode(model, books, huffman=False)
    state = decode(blob)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(state[k], v.float())
    for k, v in decode(fixed).items():
        torch.testing.assert_close(v, model.state_dict()[k].float())
    assert len(blob) <= len(fixed)


def test_method_reports_real_sizes_and_keeps_shared_values():
    load_all()
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8 * 16, 40, generator=g)
    data = [(x[i:i + 16], x[i:i + 16, :4].argmax(1)) for i in range(0, len(x), 16)]
    model = nn.Sequential(nn.Linear(40, 64), nn.ReLU(), nn.Linear(64, 4))
    ctx = RunContext(model=model, example_inputs=None, target="sparsity=0.9", train_data=data,
                     options={"rounds": 2, "bits_fc": 3}, train_config=TrainConfig(epochs=1, lr=0.05, progress=False))
    res = get_method("deep-compression").run(ctx)
    info = res.info
    assert info["dense_bytes"] == 4 * (40 * 64 + 64 + 64 * 4 + 4)
    assert info["compressed_bytes"] == len(encode(model, res.callbacks[0].books))
    assert info["ratio"] == pytest.approx(info["dense_bytes"] / info["compressed_bytes"])
    for fqn, m in get_masks(model).items():
        assert len(torch.unique(model.get_parameter(fqn).detach()[m])) <= 8
        assert int((model.get_parameter(fqn).detach()[~m] != 0).sum()) == 0
    t = res.telemetry
    assert res.engaged is True and t["stages_done"] == ["prune", "share", "centroids", "huffman"]
    assert t["bits"] == {"0.weight": 3, "2.weight": 3} and all(1 < k <= 8 for k in t["clusters"].values())
    assert t["compressed_bytes"] == info["compressed_bytes"]


def test_a_codebook_larger_than_the_layer_warns_that_nothing_was_compressed():
    load_all()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 8, generator=g)
    data = [(x[i:i + 16], x[i:i + 16, :4].argmax(1)) for i in range(0, 32, 16)]
    model = nn.Sequential(nn.Linear(8, 4))
    ctx = RunContext(model=model, example_inputs=None, target="sparsity=0.5", train_data=data,
                     options={"rounds": 1, "bits_fc": 16, "centroid_epochs": 0},
                     train_config=TrainConfig(epochs=1, lr=0.05, progress=False))
    with pytest.warns(MechanismWarning, match="lower options.bits_fc"):
        res = get_method("deep-compression").run(ctx)
    assert res.engaged is False and res.telemetry["compressed_bytes"] >= res.telemetry["dense_bytes"]
    assert res.telemetry["stages_done"] == ["prune", "share", "huffman"]


# --- small-scale check (scaled) ----------------------------------------------------------------------------
# LeNet-300-100, Fashion-MNIST 6,000 / 2,000 images, no augmentation; dense 4 epochs (SGD 0.05, cosine);
# deep-compression to 92% (3 rounds x 1 epoch retraining), 5-bit sharing, 1 epoch of centroid fine-tuning.
# Calibration run (`pytest -m slow tests/methods/test_deep_compression.py`, seed 0): dense 82.95%, compressed
# 79.40% (-3.55 pp; the entry's 1 pp needs a converged dense model and longer retraining: allowed 5.0),
# 1,066,440 -> 27,427 bytes (38.9x; asserted >= 30x), fixed-width stream 34,876 bytes >= Huffman.
DC_MARGINS = {"vs_dense": 5.0, "min_ratio": 30.0}


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(FASHION), reason="Fashion-MNIST not installed")
def test_small_scale_deep_compression(record_property):
    import copy

    import prunekit as pk

    load_all()
    bundle = pk.data.load("fashion-mnist", batch_size=128, subset=(6000, 2000), augment=False, val_fraction=0)
    torch.manual_seed(0)
    dense = pk.models.create("lenet300", num_classes=10, in_channels=1, input_size=28)
    cfg = pk.TrainConfig(epochs=4, lr=0.05, progress=False)
    pk.fit(dense, bundle.train, cfg)
    acc_dense = pk.evaluate(dense, bundle.test)["accuracy"]
    model = copy.deepcopy(dense)
    ctx = RunContext(model=model, example_inputs=None, target="sparsity=0.92", train_data=bundle.train,
                     options={"retrain_lr_factor": 0.2}, train_config=cfg)
    res = get_method("deep-compression").run(ctx)
    acc = pk.evaluate(model, bundle.test)["accuracy"]
    info = res.info
    record_property("numbers", {"dense": acc_dense, "compressed": acc, **{k: info[k] for k in (
        "dense_bytes", "compressed_bytes", "fixed_width_bytes", "ratio")}})
    for fqn, m in get_masks(model).items():
        w = model.get_parameter(fqn).detach()
        assert len(torch.unique(w[m])) <= 32 and int((w[~m] != 0).sum()) == 0
    assert acc >= acc_dense - DC_MARGINS["vs_dense"] / 100
    assert info["ratio"] >= DC_MARGINS["min_ratio"]
    assert info["compressed_bytes"] <= info["fixed_width_bytes"]
    state = decode(encode(model, res.callbacks[0].books))
    torch.testing.assert_close(state["fc1.weight"], model.fc1.weight.detach())


def test_centroid_gradient_is_the_sum_by_default_and_the_mean_on_request():
    from prunekit.methods.deep_compression import Codebook, SharedWeights

    book = Codebook(centroids=torch.tensor([0.0, 1.0]), index=torch.tensor([[0, 0, 1], [-1, 0, 1]]), bits=1)
    grad = torch.tensor([[1.0, 2.0, 10.0], [100.0, 3.0, 20.0]])  # the pruned position (-1) must not count
    assert SharedWeights({"w": book}).centroid_grad(book, grad).tolist() == [6.0, 30.0]
    assert SharedWeights({"w": book}, reduce="mean").centroid_grad(book, grad).tolist() == [2.0, 15.0]
    with pytest.raises(Exception, match="reduce='median'.*'mean' or 'sum'"):
        SharedWeights({"w": book}, reduce="median")
    with pytest.raises(Exception, match="lr_factor=0"):
        SharedWeights({"w": book}, lr_factor=0)


def test_centroid_step_is_lr_factor_times_lr_times_the_summed_gradient():
    from types import SimpleNamespace

    from prunekit.methods.deep_compression import Codebook, SharedWeights

    model = nn.Linear(3, 2, bias=False)
    book = Codebook(centroids=torch.tensor([0.5, -1.0]), index=torch.tensor([[0, 0, 1], [-1, 1, 1]]), bits=1)
    model.weight.grad = torch.tensor([[1.0, 2.0, 4.0], [8.0, 1.0, 1.0]])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = SimpleNamespace(model=model, optimizer=opt)
    cb = SharedWeights({"weight": book}, lr_factor=0.5)
    cb.on_after_backward(state)
    cb.on_after_step(state)
    assert book.centroids.tolist() == pytest.approx([0.5 - 0.05 * 3.0, -1.0 - 0.05 * 6.0])
    torch.testing.assert_close(model.weight.detach(), torch.tensor([[0.35, 0.35, -1.3], [0.0, -1.3, -1.3]]))


def test_bad_centroid_grad_option_leaves_the_model_unchanged():
    load_all()
    model = nn.Sequential(nn.Linear(8, 4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = RunContext(model=model, example_inputs=None, target="sparsity=0.5", options={"centroid_grad": "median"})
    with pytest.raises(Exception, match=r"options\['centroid_grad'\]='median' is not one of"):
        get_method("deep-compression").run(ctx)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_max_step_caps_one_centroid_step_at_a_fraction_of_the_spread():
    from types import SimpleNamespace

    from prunekit.methods.deep_compression import Codebook, SharedWeights

    model = nn.Linear(3, 1, bias=False)
    book = Codebook(centroids=torch.tensor([-1.0, 1.0]), index=torch.tensor([[0, 1, 1]]), bits=1)
    model.weight.grad = torch.tensor([[-50.0, 0.1, 0.1]])  # centroid 0: a huge step; centroid 1: a small one
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cb = SharedWeights({"weight": book}, max_step=0.05)  # cap: 0.05 * (1 - (-1)) = 0.1
    cb.on_after_backward(SimpleNamespace(model=model, optimizer=opt))
    cb.on_after_step(SimpleNamespace(model=model, optimizer=opt))
    assert book.centroids.tolist() == pytest.approx([-0.9, 1.0 - 0.1 * 0.2])
    with pytest.raises(Exception, match="max_step=-1"):
        SharedWeights({"weight": book}, max_step=-1)
