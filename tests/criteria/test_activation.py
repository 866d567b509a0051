import numpy as np
import torch
from torch import nn

from prunekit.api import build_graph, score_groups
from prunekit.criteria import ChannelView, get_criterion, score_member


def _act_view(acts):
    return ChannelView("m.weight", 0, "producer", np.arange(acts.shape[0]), torch.ones(acts.shape[0], 1),
                       activations=acts)


def test_apoz_and_mean_act_oracle_disagree():
    # channel 0 fires rarely but strongly (mean 2.25, 75% zeros); channel 1 always weakly (mean 1, 0% zeros)
    acts = torch.tensor([[0.0, 0.0, 0.0, 9.0], [1.0, 1.0, 1.0, 1.0]])
    np.testing.assert_allclose(score_member(get_criterion("apoz"), _act_view(acts)), [0.25, 1.0])
    np.testing.assert_allclose(score_member(get_criterion("mean-act"), _act_view(acts)), [2.25, 1.0])


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.relu(self.conv1(x)))


def test_statistics_are_read_where_the_next_layer_reads_them():
    torch.manual_seed(0)
    m = Tiny()
    with torch.no_grad():
        m.conv1.bias.copy_(torch.tensor([-10.0, 0.0, 0.3]))  # channel 0 is dead after the ReLU
    x = torch.randn(8, 1, 5, 5)
    calib = [(x, torch.zeros(8, dtype=torch.long))]
    g = build_graph(m, x)
    post = m.relu(m.conv1(x)).detach()  # what conv2 reads  [8, 3, 5, 5]
    mean = post.mean((0, 2, 3)).double().numpy()
    nonzero = (post != 0).double().mean((0, 2, 3)).numpy()
    (got_mean,) = score_groups(m, g, "mean-act", calib=calib)
    (got_apoz,) = score_groups(m, g, "apoz", calib=calib)
    np.testing.assert_allclose(got_mean, mean / mean.mean(), rtol=1e-6)  # every member agrees; mean-normalised
    np.testing.assert_allclose(got_apoz, nonzero / nonzero.mean(), rtol=1e-6)
    assert got_apoz[0] == 0
