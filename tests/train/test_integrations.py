"""The same prunekit callbacks inside real (tiny) Lightning and Hugging Face Trainer runs."""
import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.train import HOOKS, Callback, TrainConfig, fit

pl = pytest.importorskip("lightning.pytorch")
transformers = pytest.importorskip("transformers")

from prunekit.train.hf import HFCallback  # noqa: E402
from prunekit.train.lightning import LightningCallback  # noqa: E402

LR, WD = 0.05, 0.01


class Counter(Callback):
    def __init__(self):
        self.counts = dict.fromkeys(HOOKS, 0)
        self.steps_seen = []

    def on_train_start(self, s): self.counts["on_train_start"] += 1
    def on_epoch_start(self, s): self.counts["on_epoch_start"] += 1
    def on_batch_start(self, s): self.counts["on_batch_start"] += 1
    def on_before_backward(self, s): self.counts["on_before_backward"] += 1
    def on_after_backward(self, s): self.counts["on_after_backward"] += 1

    def on_after_step(self, s):
        self.counts["on_after_step"] += 1
        self.steps_seen.append(s.step)
        assert s.optimizer is not None and s.model is not None

    def on_epoch_end(self, s): self.counts["on_epoch_end"] += 1
    def on_train_end(self, s): self.counts["on_train_end"] += 1


class ZeroWeight(Callback):
    """A mask keeper in miniature: one weight entry is zero after every optimizer step."""

    def __init__(self, name):
        self.name = name

    def on_after_step(self, state):
        with torch.no_grad():
            state.model.get_parameter(self.name).view(-1)[0] = 0


class L2(Callback):
    """Adds (wd/2)·||w||² over the named parameters to the loss."""

    def __init__(self, names=None):
        self.names = names

    def on_before_backward(self, state):
        params = [p for n, p in state.model.named_parameters() if self.names is None or n in self.names]
        state.loss = state.loss + 0.5 * WD * sum((p ** 2).sum() for p in params)


class Rescale(Callback):
    def on_before_backward(self, state):
        state.loss = 2 * state.loss


# ------------------------------------------------------------------------------------------ Lightning


class Module(pl.LightningModule):
    def __init__(self, net, wd=0.0):
        super().__init__()
        self.net, self.wd = net, wd

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR, momentum=0.9, weight_decay=self.wd)


def _lightning(net, callbacks, tmp_path, wd=0.0, epochs=2, accumulate=1):
    from torch.utils.data import DataLoader, TensorDataset

    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         accumulate_grad_batches=accumulate, callbacks=callbacks)
    module = Module(net, wd)
    x, y = _blobs()
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=16))
    return module


def _blobs():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (64,), generator=g)
    return torch.randn(3, 8, generator=g)[y] * 3 + torch.randn(64, 8, generator=g), y


def test_lightning_hooks_counts_and_same_weights_as_fit(tmp_path, make_mlp, make_loader):
    counter = Counter()
    module = _lightning(make_mlp(), [], tmp_path)  # warm-up-free reference: plain Lightning
    lit = _lightning(make_mlp(), [LightningCallback(counter, module="net"), LightningCallback(L2(), module="net"),
                                  LightningCallback(ZeroWeight("0.weight"), module="net")], tmp_path)
    assert counter.counts == {"on_train_start": 1, "on_epoch_start": 2, "on_batch_start": 8, "on_before_backward": 8,
                              "on_after_backward": 8, "on_after_step": 8, "on_epoch_end": 2, "on_train_end": 1}
    assert counter.steps_seen == list(range(1, 9))
    assert lit.net[0].weight.view(-1)[0].item() == 0.0
    # the same callbacks in prunekit's fit, same data order and optimizer: the same final weights
    ref = make_mlp()
    x, y = _blobs()
    fit(ref, make_loader(x, y), TrainConfig(epochs=2, lr=LR, weight_decay=0.0, scheduler="constant", progress=False),
        callbacks=[L2(), ZeroWeight("0.weight")])
    torch.testing.assert_close(lit.net.state_dict(), ref.state_dict(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(module.net[3].weight, ref[3].weight, atol=1e-4)  # the callbacks did change things


class OutputsSeen(Callback):
    """Records, in on_before_backward, whether state.outputs is the network's output on the graph."""

    def __init__(self):
        self.seen = []

    def on_before_backward(self, state):
        out = state.outputs
        self.seen.append(None if out is None else (tuple(out.shape), out.requires_grad))


def test_lightning_hands_the_networks_outputs_to_callbacks_and_sensitivity_reg_matches_fit(tmp_path, make_mlp,
                                                                                          make_loader):
    from prunekit.methods.sensitivity_reg import SensitivityRegularizer

    seen = OutputsSeen()
    net = make_mlp()
    lit = _lightning(net, [LightningCallback(seen, module="net"),
                           LightningCallback(SensitivityRegularizer(dict(net.named_parameters()), lam=0.05),
                                             module="net")], tmp_path)
    assert seen.seen == [((16, 3), True)] * 8  # every step: the [batch, classes] logits, still on the graph
    ref = make_mlp()
    x, y = _blobs()
    fit(ref, make_loader(x, y), TrainConfig(epochs=2, lr=LR, weight_decay=0.0, scheduler="constant", progress=False),
        callbacks=[SensitivityRegularizer(dict(ref.named_parameters()), lam=0.05)])
    torch.testing.assert_close(lit.net.state_dict(), ref.state_dict(), rtol=1e-5, atol=1e-6)
    plain = _lightning(make_mlp(), [], tmp_path)
    assert not torch.allclose(plain.net[3].weight, ref[3].weight, atol=1e-4)  # the regulariser did act


def test_lightning_loss_term_equals_builtin_weight_decay(tmp_path, make_mlp):
    a = _lightning(make_mlp(), [], tmp_path, wd=WD)
    b = _lightning(make_mlp(), [LightningCallback(L2())], tmp_path)
    torch.testing.assert_close(a.net.state_dict(), b.net.state_dict(), rtol=1e-5, atol=1e-6)


def test_lightning_gradient_accumulation_steps_once_per_optimizer_step(tmp_path, make_mlp):
    counter = Counter()
    _lightning(make_mlp(), [LightningCallback(counter)], tmp_path, epochs=1, accumulate=2)
    assert counter.counts["on_batch_start"] == 4 and counter.counts["on_after_step"] == 2


def test_lightning_refuses_loss_rescaling_and_non_callbacks(tmp_path, make_mlp):
    with pytest.raises(ConfigError, match=r"Rescale.on_before_backward rescaled or replaced state.loss"):
        _lightning(make_mlp(), [LightningCallback(Rescale())], tmp_path, epochs=1)
    with pytest.raises(ConfigError, match=r"LightningCallback\(cb=.*\): cb must be a prunekit.train.Callback"):
        LightningCallback(object())


# ------------------------------------------------------------------------------------------ Hugging Face


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n=48, seq=12, vocab=50):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, seq), generator=g)
        self.labels = (self.ids[:, 0] % 2).long()

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


def _bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=32, num_labels=2)
    return BertForSequenceClassification(cfg)


def _hf(tmp_path, callbacks, wd=0.0, epochs=2):
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate (the 'zoo' extra)")
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=epochs, per_device_train_batch_size=16,
                             learning_rate=LR, weight_decay=wd, optim="sgd", lr_scheduler_type="constant",
                             max_grad_norm=0.0, report_to=[], save_strategy="no", logging_strategy="epoch",
                             use_cpu=True, disable_tqdm=True, seed=0, data_seed=0)
    model = _bert()
    trainer = Trainer(model=model, args=args, train_dataset=_Tokens(), callbacks=callbacks)
    trainer.train()
    return model, trainer


@pytest.mark.slow
def test_hf_trainer_hooks_counts_and_weight_kept_zero(tmp_path):
    counter = Counter()
    name = "classifier.weight"
    model, trainer = _hf(tmp_path, [HFCallback(counter), HFCallback(ZeroWeight(name))])
    assert trainer.state.global_step == 6
    assert counter.counts == {"on_train_start": 1, "on_epoch_start": 2, "on_batch_start": 6, "on_before_backward": 6,
                              "on_after_backward": 6, "on_after_step": 6, "on_epoch_end": 2, "on_train_end": 1}
    assert counter.steps_seen == [1, 2, 3, 4, 5, 6]
    assert model.get_parameter(name).view(-1)[0].item() == 0.0
    assert model.get_parameter(name).abs().sum().item() > 0


@pytest.mark.slow
def test_hf_loss_term_equals_builtin_weight_decay(tmp_path):
    from transformers import Trainer

    decay = set(Trainer.get_decay_parameter_names(None, _bert()))
    a, _ = _hf(tmp_path / "a", [], wd=WD)
    b, _ = _hf(tmp_path / "b", [HFCallback(L2(decay))])
    c, _ = _hf(tmp_path / "c", [])
    torch.testing.assert_close(a.state_dict(), b.state_dict(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a.classifier.weight, c.classifier.weight, atol=1e-5)
