import pytest
import torch
import torch.nn as nn

import prunekit as pk
from prunekit.errors import ConfigError


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def conv_bn(c_in, c_out, k):  # conv without bias + BN (weight, bias)
    return c_in * c_out * k * k + 2 * c_out


def test_lenet300_params_by_hand():
    m = pk.models.create("lenet300")
    assert n_params(m) == (784 * 300 + 300) + (300 * 100 + 100) + (100 * 10 + 10) == 266610
    m3 = pk.models.create("lenet300", in_channels=3, input_size=32, num_classes=100)
    assert n_params(m3) == (3072 * 300 + 300) + (300 * 100 + 100) + (100 * 100 + 100)
    assert m3(torch.zeros(2, 3, 32, 32)).shape == (2, 100)


def test_lenet5_params_by_hand():
    m = pk.models.create("lenet5")
    # conv 1->20 5x5, conv 20->50 5x5, fc 50*4*4 -> 500, fc 500 -> 10 (28 -> 24 -> 12 -> 8 -> 4)
    assert n_params(m) == (25 * 20 + 20) + (20 * 50 * 25 + 50) + (800 * 500 + 500) + (500 * 10 + 10) == 431080
    m32 = pk.models.create("lenet5", in_channels=3, input_size=32)  # 32 -> 28 -> 14 -> 10 -> 5
    assert m32.fc1.in_features == 50 * 5 * 5
    assert m32(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    with pytest.raises(ConfigError, match="input_size=12 is too small for lenet5"):
        pk.models.create("lenet5", input_size=12)


def test_vgg_small_params_by_hand():
    m = pk.models.create("vgg-small")
    widths = [1, 32, 32, 64, 64, 128, 128]
    convs = sum(conv_bn(a, b, 3) for a, b in zip(widths, widths[1:]))
    assert n_params(m) == convs + 128 * 10 + 10 == 288170
    assert [c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d)] == widths[1:]
    assert sum(isinstance(x, nn.MaxPool2d) for x in m.modules()) == 2


def test_vgg16_cifar_width_and_small_inputs():
    m = pk.models.create("vgg16", in_channels=3, input_size=32, width=0.25)
    chans = [c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d)]
    assert chans == [16, 16, 32, 32, 64, 64, 64, 128, 128, 128, 128, 128, 128]
    assert sum(isinstance(x, nn.MaxPool2d) for x in m.modules()) == 5
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    m28 = pk.models.create("vgg19", input_size=28, width=0.125)  # 28 -> 14 -> 7 -> 3 -> 1: the 5th pool is dropped
    assert sum(isinstance(x, nn.MaxPool2d) for x in m28.modules()) == 4
    assert sum(isinstance(x, nn.Conv2d) for x in m28.modules()) == 16
    assert m28(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("depth", [20, 32, 56, 110])
def test_resnet_params_by_hand(depth):
    n = (depth - 2) // 6
    m = pk.models.create(f"resnet{depth}", num_classes=10)
    stem = conv_bn(1, 16, 3)
    blocks = 0
    for c_in, c in ((16, 16), (16, 32), (32, 64)):
        blocks += conv_bn(c_in, c, 3) + conv_bn(c, c, 3) + (conv_bn(c_in, c, 1) if c_in != c else 0)
        blocks += (n - 1) * 2 * conv_bn(c, c, 3)
    assert n_params(m) == stem + blocks + 64 * 10 + 10
    convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
    assert len(convs) == 1 + 6 * n + 2  # stem, two per block, two projection shortcuts
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_resnet20_shapes_and_width():
    m = pk.models.create("resnet20", in_channels=3, input_size=32, width=0.5, num_classes=100)
    assert [m.layer1[0].conv1.out_channels, m.layer2[0].conv1.out_channels, m.layer3[0].conv1.out_channels] == [8, 16, 32]
    assert m.fc.out_features == 100
    feats = {}
    m.layer3.register_forward_hook(lambda mod, i, o: feats.__setitem__("l3", o.shape))
    m(torch.zeros(1, 3, 32, 32))
    assert feats["l3"] == (1, 32, 8, 8)
    with pytest.raises(ConfigError, match="depth=21 must be 6n"):
        from prunekit.models.resnet import CifarResNet
        CifarResNet(21)


def test_mobilenetv2_small_input():
    m = pk.models.create("mobilenetv2", in_channels=3, input_size=32, width=0.5)
    blocks = [b for b in m.modules() if type(b).__name__ == "InvertedResidual"]
    assert len(blocks) == 17 and sum(b.use_residual for b in blocks) == 10
    dw = [c for c in m.modules() if isinstance(c, nn.Conv2d) and c.groups > 1]
    assert len(dw) == 17 and all(c.groups == c.in_channels == c.out_channels for c in dw)
    feats = {}
    m.features.register_forward_hook(lambda mod, i, o: feats.__setitem__("f", o.shape))
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert feats["f"] == (2, 1280, 4, 4)  # three stride-2 stages: 32 -> 4


def test_lstm_reads_image_rows_and_tokens():
    m = pk.models.create("lstm", hidden_size=32)
    assert m.lstm.input_size == 28 and m.lstm.hidden_size == 32
    assert n_params(m) == 4 * 32 * (28 + 32) + 2 * 4 * 32 + 32 * 10 + 10
    x = torch.randn(3, 1, 28, 28)
    # the classifier sees the last step of an LSTM run over the 28 rows
    out, _ = m.lstm(x[:, 0])
    torch.testing.assert_close(m(x), m.fc(out[:, -1]))
    t = pk.models.create("lstm", vocab_size=50, input_size=16, num_classes=5)
    assert t(torch.randint(0, 50, (2, 16))).shape == (2, 5)
    assert pk.models.example_inputs(t, 2).dtype == torch.long


def test_gpt_tiny_is_causal_with_separate_projections():
    m = pk.models.create("gpt-tiny", vocab_size=100, context_length=16, n_layer=2, d_model=32, n_head=4)
    d = 32
    per_block = 2 * 2 * d + 4 * (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    assert n_params(m) == 100 * d + 16 * d + 2 * per_block + 2 * d + d * 100
    names = {n for n, _ in m.named_modules()}
    assert {"blocks.0.attn.q_proj", "blocks.0.attn.k_proj", "blocks.0.attn.v_proj", "blocks.0.attn.o_proj"} <= names
    m.eval()
    x = torch.randint(0, 100, (2, 16))
    y = m(x)
    assert y.shape == (2, 16, 100)
    x2 = x.clone()
    x2[:, 10:] = (x2[:, 10:] + 1) % 100  # changing later tokens cannot change earlier logits
    torch.testing.assert_close(m(x2)[:, :10], y[:, :10])
    assert not torch.allclose(m(x2)[:, 10:], y[:, 10:])
    tied = pk.models.create("gpt-tiny", tie_weights=True)
    assert tied.lm_head.weight is tied.tok_emb.weight


def test_gpt_tiny_fits_a_text_bundle():
    b = pk.data.load("synthetic-text", vocab_size=20, seq_len=10, n_train=16, n_test=8)
    m = pk.models.create("gpt-tiny", num_classes=b.num_classes, in_channels=b.in_channels, input_size=b.input_size)
    assert (m.tok_emb.num_embeddings, m.context_length) == (20, 10)
    x, y = next(iter(b.test))
    logits = m(x)
    assert logits.shape == (8, 10, 20)
    assert torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()).item() > 0
