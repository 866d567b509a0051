import numpy as np
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.criteria.nisp import inf_fs, nisp_context, nisp_scores
from prunekit.errors import ConfigError


class ThreeLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.fc2 = nn.Linear(4, 2)
        self.fc3 = nn.Linear(2, 2)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _setup():
    torch.manual_seed(0)
    m = ThreeLayer()
    x = torch.randn(64, 3)
    return m, x, [(x, None)]


def test_propagation_equals_abs_weights_transposed_by_hand():
    m, x, calib = _setup()
    scores = {k[0][0].rpartition(".")[0]: v for k, v in nisp_scores(m, x[:1], calib).items()
              if any(f.endswith("fc1.weight") or f.endswith("fc2.weight") for f, _ in k)}
    frl = torch.relu(m.fc2(torch.relu(m.fc1(x)))).detach()  # what fc3 reads
    s_frl = inf_fs(frl).numpy()
    s1 = np.abs(m.fc2.weight.detach().double().numpy()).T @ s_frl  # |W2|^T s_FRL
    got = {k: v for k, v in scores.items()}
    np.testing.assert_allclose(got["fc2"], s_frl / s_frl.mean(), rtol=1e-9)
    np.testing.assert_allclose(got["fc1"], s1 / s1.mean(), rtol=1e-9)


def test_nisp_criterion_in_context_and_error_outside():
    m, x, calib = _setup()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ConfigError, match="nisp_context"):
        pk.prune_(m, example_inputs=x[:1], sparsity=0.5, criterion="nisp")
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    with nisp_context(m, x[:1], calib) as s:
        p = pk.plan(m, x[:1], sparsity=0.5, criterion="nisp")
    key1 = next(k for k in s if any(f == "fc1.weight" for f, _ in k))
    g1 = next(g for g in p.groups if any(mm["fqn"] == "fc1.weight" for mm in g.members))
    assert g1.channels == sorted(np.argsort(s[key1], kind="stable")[:2].tolist())


def test_nisp_bad_classifier_names_the_fix():
    m, x, calib = _setup()
    with pytest.raises(ConfigError, match="classifier='fc4'.*did you mean 'fc"):
        nisp_scores(m, x[:1], calib, classifier="fc4")
