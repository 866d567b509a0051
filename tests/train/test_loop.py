import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import ConfigError
from prunekit.train import HOOKS, Callback, TrainConfig, evaluate, fit
from prunekit.train.progress import progress_enabled

CFG = TrainConfig(epochs=3, lr=0.05, weight_decay=0.0, scheduler="constant", progress=False)


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def __getattribute__(self, name):
        if name in HOOKS:
            return lambda state: object.__getattribute__(self, "calls").append((name, state.epoch, state.step))
        return object.__getattribute__(self, name)


def test_fit_learns_and_beats_the_untrained_baseline(make_mlp, data, make_loader):
    x, y = data
    model = make_mlp()
    before = evaluate(model, make_loader(x, y))["accuracy"]
    res = fit(model, make_loader(x, y, shuffle=True), CFG, val_data=make_loader(x, y))
    after = evaluate(model, make_loader(x, y))
    assert after["n"] == 96
    assert after["accuracy"] >= before + 0.3 and after["accuracy"] >= 0.9
    assert [r["epoch"] for r in res.history] == [0, 1, 2] and res.steps == 18
    assert res.final["val_accuracy"] == pytest.approx(after["accuracy"])
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert all(r["lr"] == 0.05 and r["seconds"] > 0 for r in res.history)


def test_hooks_run_in_order_with_exact_counts(make_mlp, data, make_loader):
    x, y = data
    rec = Recorder()
    fit(make_mlp(), make_loader(x[:32], y[:32]), CFG.replace(epochs=2), callbacks=[rec])
    names = [c[0] for c in rec.calls]
    per_batch = ["on_batch_start", "on_before_backward", "on_after_backward", "on_after_step"]
    assert names == (["on_train_start"] + 2 * (["on_epoch_start"] + 2 * per_batch + ["on_epoch_end"])
                     + ["on_train_end"])
    steps_after = [s for n, _, s in rec.calls if n == "on_after_step"]
    assert steps_after == [1, 2, 3, 4]


def test_loss_added_in_before_backward_is_trained_on(make_mlp, data, make_loader):
    """A callback adding (wd/2)·||w||² reproduces SGD's built-in weight decay wd exactly."""
    x, y = data
    wd = 0.01

    class L2(Callback):
        def on_before_backward(self, state):
            state.loss = state.loss + 0.5 * wd * sum((p ** 2).sum() for p in state.model.parameters())

    a, b = make_mlp(), make_mlp()
    fit(a, make_loader(x, y), CFG.replace(weight_decay=wd))
    fit(b, make_loader(x, y), CFG, callbacks=[L2()])
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_gradient_mask_and_after_step_projection(make_mlp, data, make_loader):
    x, y = data
    model = make_mlp()
    w0 = model[0].weight.detach().clone()

    class Freeze(Callback):  # gradient edit: row 0 of the first layer never moves
        def on_after_backward(self, state):
            state.model[0].weight.grad[0] = 0

    class Zero(Callback):  # projection: one weight stays zero after every step
        def on_after_step(self, state):
            with torch.no_grad():
                state.model[3].weight[1, 2] = 0

    fit(model, make_loader(x, y), CFG.replace(momentum=0.0), callbacks=[Freeze(), Zero()])
    torch.testing.assert_close(model[0].weight[0], w0[0])
    assert not torch.equal(model[0].weight[1], w0[1])
    assert model[3].weight[1, 2].item() == 0.0


def test_label_smoothing_is_the_training_loss(make_mlp, data):
    x, y = data
    model = make_mlp()
    expected = F.cross_entropy(model(x), y, label_smoothing=0.2).item()
    res = fit(model, [(x, y)], CFG.replace(epochs=1, label_smoothing=0.2))
    assert res.history[0]["train_loss"] == pytest.approx(expected, rel=1e-6)


def test_distillation_loss_value_and_self_teacher_gives_zero_gradient(make_mlp, data):
    x, y = data
    student, teacher = make_mlp(0), make_mlp(1)
    T, alpha = 3.0, 0.7
    s, t = student(x), teacher(x)
    kl = F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean")
    expected = ((1 - alpha) * F.cross_entropy(s, y) + alpha * T * T * kl).item()
    res = fit(student, [(x, y)], CFG.replace(epochs=1, kd_alpha=alpha, kd_temperature=T), teacher=teacher)
    assert res.history[0]["train_loss"] == pytest.approx(expected, rel=1e-5)

    clone = make_mlp(0)
    twin = copy.deepcopy(clone)
    fit(clone, [(x, y)], CFG.replace(epochs=2, kd_alpha=1.0), teacher=copy.deepcopy(clone))
    for p, q in zip(clone.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q)


def test_gradient_clipping_bounds_the_update(make_mlp, data):
    x, y = data
    model = make_mlp()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    fit(model, [(x, y * 0)], CFG.replace(epochs=1, lr=1.0, momentum=0.0, grad_clip_norm=0.01))
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (after - before).norm().item() == pytest.approx(0.01, rel=1e-4)


def test_stop_flag_ends_training_early(make_mlp, data, make_loader):
    x, y = data

    class StopAt3(Callback):
        def on_after_step(self, state):
            state.stop = state.step == 3

    res = fit(make_mlp(), make_loader(x, y), CFG, callbacks=[StopAt3()])
    assert res.steps == 3 and res.stopped_early and len(res.history) == 1


def test_same_seed_same_weights_with_shuffle_and_dropout(make_mlp, data, make_loader):
    x, y = data
    runs = []
    for _ in range(2):
        m = make_mlp(dropout=0.3)
        fit(m, make_loader(x, y, shuffle=True), CFG.replace(epochs=2, seed=7, deterministic=True))
        runs.append(m)
    other = make_mlp(dropout=0.3)
    fit(other, make_loader(x, y, shuffle=True), CFG.replace(epochs=2, seed=8))
    for p, q, r in zip(runs[0].parameters(), runs[1].parameters(), other.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert any(not torch.equal(p, r) for p, r in zip(runs[0].parameters(), other.parameters()))


def test_evaluate_counts_by_hand_and_keeps_mode():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 3.0]])
    y = torch.tensor([0, 0, 0, 1])  # second sample is wrong
    model.train()
    m = evaluate(model, [(x[:2], y[:2]), (x[2:], y[2:])])
    assert m["accuracy"] == 0.75 and m["n"] == 4
    assert m["loss"] == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-6)
    assert model.training


def test_sequence_outputs_count_every_position():
    class Seq(nn.Module):
        def forward(self, x):  # [N, T] token ids -> [N, T, 3] logits predicting the id itself
            return F.one_hot(x, 3).float() * 5

    x = torch.tensor([[0, 1, 2], [2, 2, 1]])
    y = torch.tensor([[0, 1, 2], [2, 0, 1]])  # one of six positions wrong
    assert evaluate(Seq(), [(x, y)])["accuracy"] == pytest.approx(5 / 6)


@pytest.mark.parametrize("kwargs, match", [
    ({"config": TrainConfig(kd_alpha=0.5)}, r"kd_alpha=0.5 needs a teacher"),
    ({"teacher": nn.Linear(8, 3)}, r"teacher was given but kd_alpha=0"),
    ({"callbacks": [object()]}, r"callbacks=.* are not prunekit.train.Callback"),
    ({"config": {"lr": 0.1}}, r"config=.* must be a prunekit.train.TrainConfig"),
])
def test_bad_arguments_are_refused_before_training(make_mlp, data, kwargs, match):
    x, y = data
    model = make_mlp()
    w = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match=match):
        fit(model, [(x, y)], **{"config": CFG, **kwargs})
    for k, v in model.state_dict().items():
        assert torch.equal(v, w[k])


def test_unsized_data_needs_a_constant_schedule(make_mlp, data):
    x, y = data
    gen = ((x[i:i + 32], y[i:i + 32]) for i in range(0, 96, 32))
    with pytest.raises(ConfigError, match=r"scheduler='cosine' needs the number of batches.*scheduler='constant'"):
        fit(make_mlp(), gen, CFG.replace(scheduler="cosine"))
    res = fit(make_mlp(), ((x[i:i + 32], y[i:i + 32]) for i in range(0, 96, 32)), CFG.replace(epochs=1))
    assert res.steps == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_cuda_device_without_cuda_is_refused(make_mlp, data):
    x, y = data
    with pytest.raises(ConfigError, match=r"device='cuda' but CUDA is not available.*device='cpu'"):
        fit(make_mlp(), [(x, y)], CFG.replace(device="cuda"))


def test_progress_bar_is_off_without_tty_or_with_env(monkeypatch):
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    monkeypatch.setenv("PRUNEKIT_PROGRESS", "1")
    assert progress_enabled(True) is True
    assert progress_enabled(False) is False
    monkeypatch.setenv("PRUNEKIT_PROGRESS", "0")
    assert progress_enabled(True) is False
    monkeypatch.setenv("PRUNEKIT_PROGRESS", "1")
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    assert progress_enabled(True) is False
