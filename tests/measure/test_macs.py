import torch
import torch.nn.functional as F
from torch import nn

from prunekit.measure.macs import count_macs


def test_conv_linear_by_hand():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1, stride=2)  # out 8x4x4
            self.gconv = nn.Conv2d(8, 8, 3, padding=1, groups=4)  # 2 in-channels per group
            self.fc = nn.Linear(8 * 16, 10)

        def forward(self, x):
            return self.fc(F.relu(self.gconv(self.conv(x))).flatten(1))

    m = count_macs(M(), torch.randn(2, 3, 8, 8))
    conv = 2 * 16 * 8 * 3 * 9
    gconv = 2 * 16 * 8 * 2 * 9
    fc = 2 * 128 * 10
    assert m.per_module == {"conv": conv, "gconv": gconv, "fc": fc}
    assert m.total == conv + gconv + fc


def test_transposed_and_depthwise_by_hand():
    up = nn.ConvTranspose2d(4, 6, 2, stride=2)
    assert count_macs(up, torch.randn(1, 4, 3, 3)).total == 9 * 4 * 6 * 4  # per input pixel: Cin*Cout*k*k
    dw = nn.Conv1d(5, 10, 3, groups=5)
    assert count_macs(dw, torch.randn(1, 5, 7)).total == 5 * 10 * 1 * 3


def test_attention_matmul_and_rnn_by_hand():
    q = nn.Linear(8, 8, bias=False)

    class A(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = q

        def forward(self, x):  # x [2, 5, 8]
            h = self.q(x).view(2, 5, 2, 4).transpose(1, 2)
            a = F.scaled_dot_product_attention(h, h, h)
            e = torch.einsum("bhtd,bhsd->bhts", h, h)
            return a.sum() + e.sum()

    m = count_macs(A(), torch.randn(2, 5, 8))
    lin = 10 * 8 * 8
    sdpa = 2 * (2 * 2 * 5 * 5 * 4)
    ein = 2 * 2 * 5 * 5 * 4
    assert m.total == lin + sdpa + ein
    lstm = nn.LSTM(3, 4)
    # per step and batch element: 4 gates x hidden 4 x (input 3 + hidden 4)
    assert count_macs(lstm, torch.randn(6, 2, 3)).total == 6 * 2 * 4 * 4 * (3 + 4)


def test_elementwise_pooling_norms_count_zero():
    m = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1))
    assert count_macs(m, torch.randn(2, 3, 8, 8)).total == 0
