import pytest
import torch

import prunekit as pk
from prunekit.errors import ConfigError

BUILT_IN = ["lenet300", "lenet5", "vgg-small", "resnet20", "mobilenetv2", "lstm", "gpt-tiny"]


def test_list_models_has_every_required_model():
    names = pk.models.list_models()
    for n in BUILT_IN + ["vgg16", "vgg19", "resnet32", "resnet56", "resnet110", "hf:bert-tiny", "hf:llama-tiny",
                         "torchvision:NAME", "timm:NAME"]:
        assert n in names


@pytest.mark.parametrize("name", ["lenet300", "lenet5", "vgg-small", "resnet20", "lstm"])
@pytest.mark.parametrize("c, s, k", [(1, 28, 10), (3, 32, 7)])
def test_models_take_channels_size_and_classes(name, c, s, k):
    m = pk.models.create(name, num_classes=k, in_channels=c, input_size=s)
    x = pk.models.example_inputs(m, 2)
    assert x.shape == (2, c, s, s)
    assert m(x).shape == (2, k)


def test_same_seed_same_weights():
    torch.manual_seed(3)
    a = pk.models.create("resnet20").state_dict()
    torch.manual_seed(3)
    b = pk.models.create("resnet20").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k])


@pytest.mark.parametrize("kwargs, match", [
    ({"spec": "resnet-20"}, r"unknown model spec='resnet-20'; did you mean 'resnet20'"),
    ({"spec": "lenet-5"}, r"did you mean 'lenet5'"),
    ({"spec": "tf:resnet"}, r"unknown model prefix spec='tf:'"),
    ({"spec": "resnet20", "widht": 0.5}, r"model 'resnet20' has no option\(s\) \['widht'\]; its options are \['width'\]"),
    ({"spec": "resnet20", "num_classes": 0}, r"num_classes=0 must be an int >= 1"),
    ({"spec": "vgg-small", "width": -1}, r"width=-1 must be a positive number"),
    ({"spec": 3}, r"model spec=3 must be a string"),
])
def test_bad_specs(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        pk.models.create(**kwargs)


def test_models_table_command(capsys):
    from prunekit.models.__main__ import main

    assert main(["lenet300", "vgg-small"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| model | params | MACs | dense size (bytes) |"
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:5]] for line in lines[2:]}
    assert rows["lenet300"][0] == "266,610" and rows["vgg-small"][0] == "288,170"
    assert rows["lenet300"][2] == "1,066,896"  # 8 + header + 266,610 float32 values
    import prunekit.measure as M

    assert int(rows["lenet300"][2].replace(",", "")) == M.size_on_disk(pk.models.create("lenet300"))
