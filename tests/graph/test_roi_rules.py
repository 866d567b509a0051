"""torchvision's roi_align and the index_put that MultiScaleRoIAlign uses to gather the levels."""
import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.testing import assert_equivalent, zero_removed_

ops = pytest.importorskip("torchvision.ops")


class RoiNet(nn.Module):
    """conv features -> roi_align on fixed boxes -> written into a zeros buffer by index -> flatten -> fc."""

    def __init__(self, put=True):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 2 * 2, 5)
        self.put = put
        self.register_buffer("boxes", torch.tensor([[0, 0.0, 0.0, 4.0, 4.0], [0, 2.0, 1.0, 7.0, 6.0],
                                                    [0, 1.0, 3.0, 5.0, 7.0]]))

    def forward(self, x):
        f = torch.relu(self.conv(x))
        r = ops.roi_align(f, self.boxes, output_size=(2, 2), spatial_scale=1.0, sampling_ratio=2)
        if self.put:  # as torchvision's _multiscale_roi_align assembles the levels
            out = torch.zeros((3, f.shape[1], 2, 2), dtype=f.dtype)
            out[torch.tensor([2, 0, 1])] = r
            r = out
        return self.fc(r.flatten(1))


@pytest.mark.parametrize("put", [False, True])
def test_channels_pass_through_roi_align_and_the_pruned_model_is_the_masked_twin(put):
    torch.manual_seed(0)
    model, x = RoiNet(put).double(), torch.randn(1, 3, 8, 8, dtype=torch.float64)
    twin = copy.deepcopy(model)
    plan = pk.plan(model, x, sparsity=0.5, ignore=["fc"])
    (g,) = [g for g in plan.groups if g.channels]
    assert {m["fqn"] for m in g.members} >= {"conv.weight", "conv.bias", "fc.weight"}
    assert len({m["fqn"]: m for m in g.members}["fc.weight"]["indices"]) == 4 * 4  # 4 channels x 2 x 2
    zero_removed_(twin, plan)
    pk.prune_(model, plan)
    assert model.conv.weight.shape[0] == 4 and model.fc.weight.shape[1] == 16
    assert_equivalent(twin, model, x, atol=1e-10)


def test_index_put_of_unknown_values_does_not_make_the_reader_prunable():
    # values from an op without a rule: the zeros buffer's channels must not become a free, prunable dim
    class Opaque(RoiNet):
        def forward(self, x):
            f = torch.relu(self.conv(x))
            r = torch.fft.fft(f.flatten(2)).real[..., :4].reshape(1, 8, 2, 2).expand(3, 8, 2, 2)
            out = torch.zeros((3, 8, 2, 2), dtype=f.dtype)
            out[torch.tensor([2, 0, 1])] = r
            return self.fc(out.flatten(1))

    model, x = Opaque(), torch.randn(1, 3, 8, 8)
    plan = pk.plan(model, x, sparsity=0.5, ignore=["fc"])
    assert not [g for g in plan.groups if g.channels and any(m["fqn"] == "fc.weight" for m in g.members)]


def test_a_torchvision_detector_prunes_through_its_roi_heads_to_the_masked_twin():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=3, min_size=128, max_size=128).eval().double()
    x = ([torch.rand(3, 128, 128, dtype=torch.float64)],)
    heads = ["roi_heads.box_predictor.cls_score", "roi_heads.box_predictor.bbox_pred", "rpn.head.cls_logits",
             "rpn.head.bbox_pred"]
    twin = copy.deepcopy(model)
    plan = pk.plan(model, x, sparsity=0.5, ignore=heads)
    # the FPN's outputs reach fc6 through roi_align: its input columns are pruned with them
    fc6 = [m for g in plan.groups for m in g.members if m["fqn"] == "roi_heads.box_head.fc6.weight" and m["indices"]]
    assert fc6 and fc6[0]["dim"] == 1
    zero_removed_(twin, plan)
    r = pk.prune_(model, plan)
    assert not [s for s in r.skipped if "breaks" in s["reason"]]
    assert r.params_after < 0.4 * r.params_before
    assert_equivalent(twin, model, x, atol=1e-9)
