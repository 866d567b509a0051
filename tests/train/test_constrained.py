"""The constrained-training block (prunekit.train.constrained): projections, the ADMM updates by hand, the
penalty schedule, its place in fit with any loss, and bad input."""
import math

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.masks import get_pattern
from prunekit.train import TrainConfig, fit
from prunekit.train.constrained import ConstrainedTraining, Projection

W0 = [[0.9, -0.1, 0.4], [0.2, -0.8, 0.05], [0.3, 0.6, -0.7]]
W1 = [[0.5, -0.1, 0.45], [0.2, -0.8, 0.05], [0.3, 0.6, -0.7]]  # "after a W-step": w[0,0] fell from 0.9 to 0.5


def _linear(w):
    m = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        m.weight.copy_(torch.tensor(w))
    return m


def _close(a, b):
    return torch.allclose(a, torch.tensor(b), atol=1e-6)


def test_admm_projection_and_dual_update_on_a_3x3_example_by_hand():
    model = _linear(W0)
    cb = ConstrainedTraining(Projection(sparsity=6 / 9), rho=0.1)  # keep 3 of 9
    cb.setup(model)
    # Z0 = proj(W0): the 3 largest |w| (0.9, -0.8, -0.7); U0 = 0
    assert _close(cb.Z["weight"], [[0.9, 0, 0], [0, -0.8, 0], [0, 0, -0.7]])
    assert cb.history[0]["gap"] == pytest.approx(math.sqrt(0.01 + 0.16 + 0.04 + 0.0025 + 0.09 + 0.36))
    with torch.no_grad():
        model.weight.copy_(torch.tensor(W1))
    e1 = cb.update()
    # Z1 = proj(W1 + 0): 0.8, 0.7, 0.6 are the largest now; U1 = W1 - Z1
    assert _close(cb.Z["weight"], [[0, 0, 0], [0, -0.8, 0], [0, 0.6, -0.7]])
    assert _close(cb.U["weight"], [[0.5, -0.1, 0.45], [0.2, 0, 0.05], [0.3, 0, 0]])
    assert e1["flips"] == 2  # (0,0) left the support, (2,1) joined
    e2 = cb.update()  # W unchanged: Z2 = proj(W1 + U1) = proj([[1, -.2, .9], [.4, -.8, .1], [.6, .6, -.7]])
    assert _close(cb.Z["weight"], [[1.0, 0, 0.9], [0, -0.8, 0], [0, 0, 0]])
    # the dual brought back w[0,0] = 0.5 although 0.6 and -0.7 are larger: ADMM differs from magnitude here
    assert _close(cb.U["weight"], [[0, -0.2, 0], [0.4, 0, 0.1], [0.6, 0.6, -0.7]])
    assert e2["flips"] == 4 and cb.flips == 6 and cb.updates == 2
    # penalty (rho/2)||W - Z + U||^2 and its gradient rho (W - Z + U), by hand
    r = [[-0.5, -0.3, -0.45], [0.6, 0, 0.15], [0.9, 1.2, -1.4]]
    pen = cb.penalty()
    assert float(pen.detach()) == pytest.approx(0.05 * 5.135)
    pen.backward()
    assert torch.allclose(model.weight.grad, 0.1 * torch.tensor(r), atol=1e-6)


def test_penalty_schedule_grows_rho_to_its_cap_and_keeps_the_unscaled_multiplier():
    model = _linear(W0)
    cb = ConstrainedTraining(Projection(sparsity=6 / 9), rho=0.1, rho_factor=2.0, rho_max=0.3)
    cb.setup(model)
    with torch.no_grad():
        model.weight.copy_(torch.tensor(W1))
    cb.update()
    # LC's multiplier: lambda1 = lambda0 - mu0 (w - theta1) = -0.1 (W1 - Z1), unchanged by mu0 -> mu1
    assert cb.rho == pytest.approx(0.2)
    lam1 = -0.1 * torch.tensor([[0.5, -0.1, 0.45], [0.2, 0, 0.05], [0.3, 0, 0]])
    assert _close(cb.multipliers["weight"], lam1.tolist())
    assert _close(cb.U["weight"], [[0.25, -0.05, 0.225], [0.1, 0, 0.025], [0.15, 0, 0]])  # U = -lambda / mu1
    cb.update()
    cb.update()
    assert [h["rho"] for h in cb.history] == pytest.approx([0.1, 0.1, 0.2, 0.3])  # rho of each W-step, capped
    assert cb.rho == pytest.approx(0.3)


def test_nm_projection_is_the_registered_nm_selection_and_rows_go_whole():
    v = {"w": torch.tensor([[4.0, 1.0, -3.0, 2.0, 0.1, -5.0, 0.2, 0.3]])}
    z, m = Projection(pattern="2:4")(v)
    assert _close(z["w"], [[4.0, 0.0, -3.0, 0.0, 0.0, -5.0, 0.0, 0.3]])
    assert torch.equal(m["w"], get_pattern("2:4").select_fixed(v["w"].abs()))
    rows = {"w": torch.tensor([[3.0, 0.0], [1.0, 1.0], [0.0, -2.0], [0.5, 0.5]])}
    z, m = Projection(sparsity=0.5, pattern="row")(rows)
    assert z["w"].tolist() == [[3.0, 0.0], [0.0, 0.0], [0.0, -2.0], [0.0, 0.0]]  # norms 3, 1.41, 2, 0.71


def test_global_scope_ranks_all_layers_together_and_per_layer_sets_single_layers():
    v = {"a": torch.tensor([[5.0, 4.0, 3.0, 2.0]]), "b": torch.tensor([[0.1, 0.2, 0.3, 6.0]])}
    assert Projection(sparsity=0.5, scope="global").masks(v)["b"].tolist() == [[False, False, False, True]]
    assert Projection(sparsity=0.5).masks(v)["b"].tolist() == [[False, False, True, True]]
    m = Projection(sparsity=0.5, per_layer={"a": 0.25}).masks(v)
    assert int(m["a"].sum()) == 3 and int(m["b"].sum()) == 2


def _data(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n * 8, 6, generator=g)
    return [(x[i:i + 8], x[i:i + 8, :2].sum(1, keepdim=True)) for i in range(0, len(x), 8)]


def test_in_fit_with_any_loss_the_gap_falls_and_updates_follow_the_interval():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1))
    cb = ConstrainedTraining(Projection(sparsity=0.5), rho=2.0, interval=6, unit="step")
    mse = lambda out, y: ((out - y) ** 2).mean()  # noqa: E731 - a regression loss: the block is loss-agnostic
    fit(model, _data(), TrainConfig(epochs=4, lr=0.05, momentum=0.0, progress=False), callbacks=[cb], loss_fn=mse)
    assert [h["step"] for h in cb.history] == [0, 6, 12, 18, 24, 30, 36, 42, 48]
    gaps = [h["gap"] for h in cb.history]
    assert gaps[-1] < 0.6 * gaps[0]  # measured 0.669 -> 0.319 (rho = 0: 0.669 -> 1.348, the next test)
    epoch = ConstrainedTraining(Projection(sparsity=0.75), rho=0.5, interval=2, unit="epoch", max_updates=1)
    fit(nn.Sequential(nn.Linear(6, 1)), _data(), TrainConfig(epochs=5, lr=0.05, progress=False), callbacks=[epoch],
        loss_fn=mse)
    assert [h["step"] for h in epoch.history] == [0, 24] and epoch.updates == 1


def test_without_penalty_the_gap_does_not_close():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1))
    cb = ConstrainedTraining(Projection(sparsity=0.5), rho=0.0, interval=6, unit="step")
    fit(model, _data(), TrainConfig(epochs=4, lr=0.05, momentum=0.0, progress=False), callbacks=[cb],
        loss_fn=lambda o, y: ((o - y) ** 2).mean())
    gaps = [h["gap"] for h in cb.history]
    assert gaps[-1] > gaps[0]


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(sparsity=1.2), r"sparsity=1.2 must be in \[0, 1\)"),
    (dict(sparsity=0.9, pattern="2:4"), "conflicts with pattern='2:4'"),
    (dict(sparsity=0.5, scope="global", per_layer={"a": 0.1}), "per_layer cannot be combined"),
    (dict(sparsity=0.5, pattern="elemnt"), "did you mean 'element'"),
])
def test_bad_projection_is_refused(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        Projection(**kwargs)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(rho=-1.0), "rho=-1.0 must be a finite number >= 0"),
    (dict(rho_factor=0.5), "rho_factor=0.5 must be >= 1"),
    (dict(interval=0), "interval=0 must be a positive int"),
    (dict(unit="batch"), "unit='batch'"),
])
def test_bad_block_options_are_refused(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        ConstrainedTraining(Projection(sparsity=0.5), **kwargs)


def test_a_pattern_the_layer_cannot_take_and_unknown_layers_are_refused_at_setup():
    with pytest.raises(ConfigError, match="multiple of M=4"):
        ConstrainedTraining(Projection(pattern="2:4")).setup(_linear(W0))
    with pytest.raises(ConfigError, match="per_layer names"):
        ConstrainedTraining(Projection(sparsity=0.5, per_layer={"fc9": 0.1})).setup(_linear(W0))


def test_the_block_runs_in_lightning_as_in_fit(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from torch.utils.data import DataLoader, TensorDataset

    from prunekit.train.lightning import LightningCallback

    x = torch.cat([b[0] for b in _data()])
    y = torch.cat([b[1] for b in _data()])
    mse = lambda out, t: ((out - t) ** 2).mean()  # noqa: E731

    class Module(pl.LightningModule):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def training_step(self, batch, batch_idx):
            return mse(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1))

    lit = ConstrainedTraining(Projection(sparsity=0.5), rho=2.0, interval=6, unit="step")
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[LightningCallback(lit, module="net")])
    trainer.fit(Module(net()), DataLoader(TensorDataset(x, y), batch_size=8))
    ref = ConstrainedTraining(Projection(sparsity=0.5), rho=2.0, interval=6, unit="step")
    fit(net(), _data(), TrainConfig(epochs=2, lr=0.05, momentum=0.0, weight_decay=0.0, scheduler="constant",
                                    progress=False), callbacks=[ref], loss_fn=mse)
    assert [h["step"] for h in lit.history] == [h["step"] for h in ref.history] == [0, 6, 12, 18, 24]
    assert [h["gap"] for h in lit.history] == pytest.approx([h["gap"] for h in ref.history], rel=1e-4)
