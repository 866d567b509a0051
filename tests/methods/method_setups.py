"""Tiny models, data and run contexts shared by the method tests (the fixtures over them are in conftest.py).

A plain module, imported by name (``from method_setups import ...``): pytest loads every conftest.py under
the module name ``conftest``, so a test module cannot import helpers from one reliably.
"""
import copy

import torch
from torch import nn

import prunekit as pk
from prunekit.methods import RunContext, get_method, load_all
from prunekit.train import TrainConfig


# ---- the LeNet-5 setting of the one-shot filter family (test_l1_filter.py and the methods scored like it) ----
def lenet_setup():
    """The shipped LeNet-5 Fashion-MNIST baseline, 2,000 test images, 2 calibration batches and the bundle."""
    from prunekit.train.baseline import load_baseline

    b = pk.data.load("fashion-mnist", subset=(2000, 2000), batch_size=250, val_fraction=0.0)
    return load_baseline("lenet5-fashion-mnist"), list(b.test), b.calib(2, 128), b


def accuracy(m, batches) -> float:
    m.eval()
    with torch.no_grad():
        return sum(int((m(x).argmax(1) == y).sum()) for x, y in batches) / sum(len(y) for _, y in batches)


def random_baseline(model, calib, test, target="macs=0.5") -> float:
    """Mean accuracy of random channel selection (seeds 0-2) at ``target``, fc2 kept, no fine-tune."""
    accs = []
    for seed in (0, 1, 2):
        m = copy.deepcopy(model)
        pk.prune_(m, example_inputs=calib[0][0][:1], criterion="random", target=target, ignore=["fc2"], seed=seed)
        accs.append(accuracy(m, test))
    return sum(accs) / 3


def run_method(mid, model, calib, target="macs=0.5", train=None, **options):
    """Run method ``mid`` on a LeNet-5 (28x28 inputs, fc2 kept) with ``options``."""
    load_all()
    spec = get_method(mid)
    ctx = RunContext(model=model, example_inputs=torch.zeros(1, 1, 28, 28), target=target, calib=calib, ignore=("fc2",),
                     train_data=train, options=spec.options(options))
    return spec.run(ctx)


def tiny_lenet():
    """An untrained LeNet-5 (seed 0) and one calibration batch of 16 random 28x28 images."""
    torch.manual_seed(0)
    m = pk.models.create("lenet5")
    g = torch.Generator().manual_seed(0)
    calib = [(torch.randn(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g))]
    return m, calib


def constant_(m):
    """Every parameter of ``m`` set to 0.05 (every norm and importance ties); returns ``m``."""
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(0.05)
    return m


# ---- a tiny conv net: conv(1->4)-BN-ReLU, conv(4->6)-BN-ReLU, pool, linear(6->3), on 6x6 images ---------------
def tiny_convnet(dead_gamma: float | None = None, dead: bool = False) -> nn.Sequential:
    """The net under seed 0; ``dead=True`` kills BN channel 1 of the first block (beta = -10 before a ReLU: no
    loss gradient reaches it) and ``dead_gamma`` also sets its scale."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
    with torch.no_grad():
        if dead_gamma is not None:
            model[1].weight[1] = dead_gamma
        if dead or dead_gamma is not None:
            model[1].bias[1] = -10.0
    return model


def conv_batches(n: int, labels: str = "random"):
    """``n`` batches of 8 random 1x6x6 images (generator seed 0). ``labels="random"``: 3 random classes drawn
    batch by batch; ``"tercile"``: labels the net can learn (the image mean's tercile)."""
    g = torch.Generator().manual_seed(0)
    if labels == "random":
        return [(torch.randn(8, 1, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]
    xs = [torch.randn(8, 1, 6, 6, generator=g) for _ in range(n)]
    return [(x, torch.bucketize(x.mean((1, 2, 3)), torch.tensor([-0.07, 0.07]))) for x in xs]


def conv_ctx(model, data, **kw) -> RunContext:
    """A training-time run of ``model`` on ``data`` (a list of batches) to ``macs=0.5`` for one epoch at a constant
    lr of 0.1 without weight decay; ``kw`` overrides any RunContext field."""
    base = dict(model=model, example_inputs=data[0][0][:2], target="macs=0.5", train_data=data, prune_epochs=1,
                train_config=pk.TrainConfig(lr=0.1, weight_decay=0.0, scheduler="constant", progress=False))
    base.update(kw)
    return RunContext(**base)


# ---- a tiny MLP task for the weight-pruning methods ------------------------------------------------------------
def tiny_mlp_task(d_in: int, hidden: int, classes: int, n_batches: int):
    """Under seed 0: Linear(d_in, hidden)-ReLU-Linear(hidden, classes) and ``n_batches`` batches of 16 random
    inputs with random labels."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, classes))
    data = [(torch.randn(16, d_in), torch.randint(0, classes, (16,))) for _ in range(n_batches)]
    return model, data


# ---- VGG-small (width 0.25) on the synthetic data set --------------------------------------------------------
def vgg_synthetic(n_train: int, n_test: int, batch_size: int):
    """Under seed 0: vgg-small at width 0.25, then the synthetic data bundle (no validation split)."""
    torch.manual_seed(0)
    model = pk.models.create("vgg-small", width=0.25)
    data = pk.data.load("synthetic", batch_size=batch_size, n_train=n_train, n_test=n_test, val_fraction=0.0)
    return model, data


def bundle_ctx(model, data, **kw) -> RunContext:
    """A run of ``model`` on a data bundle's train batches to ``macs=0.5`` for one epoch; ``kw`` overrides any
    RunContext field (``train_config``, ``calib``, ``options``, ...)."""
    base = dict(model=model, example_inputs=data.example_inputs(2), target="macs=0.5", train_data=data.train,
                prune_epochs=1)
    base.update(kw)
    return RunContext(**base)


# ---- linearly separable batches for the weight-pruning methods -------------------------------------------------
def separable_batches(n: int, batch: int, d: int, classes: int = 2, *, seed: int = 0, labels: str = "argmax"):
    """``n`` batches of ``batch`` Gaussian inputs of dimension ``d`` (generator ``seed``) with labels a linear
    model can learn: ``"argmax"`` of the first ``classes`` coordinates, or ``"sign"`` of the first one."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n * batch, d, generator=g)
    y = (x[:, 0] > 0).long() if labels == "sign" else x[:, :classes].argmax(1)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)]


def sign_task(n_batches: int):
    """``n_batches`` batches of 8 ten-feature inputs labelled by the sign of the first feature (seed 0)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_batches * 8, 10, generator=g)
    return [(x[i:i + 8], (x[i:i + 8, 0] > 0).long()) for i in range(0, len(x), 8)]


def sign_mlp() -> nn.Sequential:
    """The 10-30-2 ReLU MLP of the weight-method tests (seed 0)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 30), nn.ReLU(), nn.Linear(30, 2))


def sign_ctx(model, data, target: str, epochs: int, options: dict) -> RunContext:
    """A RunContext training ``model`` on ``data`` for ``epochs`` pre-cut epochs at lr 0.05."""
    return RunContext(model=model, example_inputs=None, target=target, train_data=data, prune_epochs=epochs,
                      train_config=TrainConfig(lr=0.05, progress=False), options=options)


# ---- the width-search methods: a trained tiny conv net and held-out batches -----------------------------------
_TRAINED_TINY: dict = {}


def trained_tiny_convnet() -> nn.Sequential:
    """A copy of tiny_convnet trained 30 epochs on the first 6 tercile batches (trained once per process)."""
    import copy

    if not _TRAINED_TINY:
        m = tiny_convnet()
        pk.fit(m, conv_batches(8, labels="tercile")[:6], pk.TrainConfig(epochs=30, lr=0.05, scheduler="constant",
                                                                        progress=False))
        _TRAINED_TINY["m"] = m
    return copy.deepcopy(_TRAINED_TINY["m"])


def search_ctx(model, target: str = "macs=0.5", **options) -> RunContext:
    """A search method's run on the tercile batches: 6 to train / recalibrate on, 2 held out to score on."""
    data = conv_batches(8, labels="tercile")
    return RunContext(model=model, example_inputs=data[0][0][:2], target=target, train_data=data[:6],
                      val_data=data[6:], options=options)


def planted_bn_channel(n: int, batch: int, seed: int = 0):
    """Linear(2, 2) fixed at the identity -> BN -> ReLU -> Linear(2, 2); the label is x0 > 0, so BN channel 0
    carries the label and channel 1 only noise (x1): the planted useless channel of the variational methods."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
        model[0].bias.zero_()
    model[0].requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    y = (x[:, 0] > 0).long()
    return model, [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


# ---- the robust methods' setting (adv-admm, atmc): two features, label x0 > x1, a 10-24-2 MLP ----
def margin_batches():
    """10 batches of 16: 10 Gaussian features, label ``x0 - x1 > 0``."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10 * 16, 10, generator=g)
    return [(x[i:i + 16], (x[i:i + 16, 0] - x[i:i + 16, 1] > 0).long()) for i in range(0, len(x), 16)]


def margin_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 24), nn.ReLU(), nn.Linear(24, 2))


def margin_ctx(m, target: str, epochs: int, options: dict) -> RunContext:
    return RunContext(model=m if m is not None else margin_mlp(), example_inputs=None, target=target,
                      train_data=margin_batches(), prune_epochs=epochs,
                      train_config=TrainConfig(lr=0.05, progress=False), options=options)
