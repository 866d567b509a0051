"""Auxiliary classifiers and the output discriminator (prunekit/models/heads.py)."""
import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.models.heads import AuxClassifiers, Discriminator, WithAux, evenly_spaced


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))


def test_heads_read_the_named_outputs_train_with_the_model_and_leave_it_as_it_was():
    net = _net()
    x = torch.randn(5, 1, 6, 6)
    with torch.no_grad():
        ref = net(x)
    aux = AuxClassifiers(net, ["0", "2"], num_classes=3, example_inputs=x[:2])
    out = net(x)
    assert torch.equal(out, ref)  # the hooks read, they do not change the forward
    assert aux.logits["0"].shape == (5, 3) and aux.logits["2"].shape == (5, 3)
    assert aux.heads["0"].bn.num_features == 4 and aux.heads["2"].bn.num_features == 6
    both = WithAux(net, aux)
    n_net, n_aux = sum(p.numel() for p in net.parameters()), sum(p.numel() for p in aux.parameters())
    assert sum(p.numel() for p in both.parameters()) == n_net + n_aux
    opt = torch.optim.SGD(both.parameters(), lr=0.1)
    before = aux.heads["0"].fc.weight.detach().clone()
    y = torch.tensor([0, 1, 2, 0, 1])
    loss = nn.functional.cross_entropy(both(x), y) + nn.functional.cross_entropy(aux.logits["0"], y)
    loss.backward()
    opt.step()
    assert not torch.equal(before, aux.heads["0"].fc.weight)
    aux.remove()
    assert all(not m._forward_hooks for m in net.modules()) and aux.logits == {}
    assert set(net.state_dict()) == set(_net().state_dict())  # no head inside the model


def test_bad_layer_name_is_refused_with_the_names_to_use():
    with pytest.raises(ConfigError, match="not a module"):
        AuxClassifiers(_net(), ["conv9"], num_classes=3)


def test_evenly_spaced_and_discriminator():
    assert evenly_spaced(list("abcdefghi"), 2) == ["c", "f"]
    assert evenly_spaced(list("ab"), 5) == ["a"]  # capped at len - 1
    assert evenly_spaced(list("abc"), 0) == []
    d = Discriminator(10, hidden=(8,))
    assert d(torch.zeros(4, 10)).shape == (4,) and len([m for m in d.modules() if isinstance(m, nn.Linear)]) == 2
