"""Coverage of the structural engine on real architectures, through the zoo harness of
``benchmarks/zoo.py`` (the same code path as ``benchmarks/zoo_coverage.py``).

The default run covers a fast representative subset; ``-m zoo`` runs every model of the zoo.
"""
import pytest
import torch
from torch import nn

from benchmarks import zoo

# convnet with residual adds (64x64 input), depthwise convs + squeeze-excitation, encoder attention,
# decoder attention with grouped-query heads + gated MLP + RMSNorm, ViT with a class token
SUBSET = ["tv:resnet18", "tv:mobilenet_v3_small", "hf:bert", "hf:llama", "hf:vit"]


@pytest.mark.parametrize("name", SUBSET)
def test_prunekit_passes_representative_subset(name):
    rec = zoo.run_case(zoo.get(name), "prunekit")
    assert rec["status"] == "pass", f"{name}: {rec.get('stage')}: {rec.get('error_type')}: {rec.get('error')}"
    assert rec["params_after"] <= (1 - zoo.MIN_PARAM_DROP) * rec["params_before"]


def test_subset_heads_are_found():
    # the classifier / lm_head of each subset model is what the harness ignores
    expected = {"tv:resnet18": ["fc"], "tv:mobilenet_v3_small": ["classifier.3"], "hf:bert": ["classifier"],
                "hf:llama": ["lm_head"], "hf:vit": ["classifier"]}
    for name in SUBSET:
        assert zoo.get(name).build().ignore == expected[name]


def test_harness_flags_a_changed_output_shape():
    # pruning the classifier's outputs (nothing ignored) changes the output shape: the harness must fail it
    case = zoo.get("tv:resnet18")
    no_heads = zoo.Case("tv:resnet18-no-ignore", case.family, lambda: _without_ignore(case.build()))
    rec = zoo.run_case(no_heads, "torch-pruning")
    assert rec["status"] == "fail"
    assert rec["stage"] == "check" and "output shapes changed" in rec["error"]


def test_harness_flags_a_small_param_drop():
    # a model whose only prunable layer is the ignored head cannot lose 20% of its parameters
    def build():
        model = nn.Sequential(nn.Linear(8, 64), nn.Linear(64, zoo.NUM_CLASSES)).eval()
        return zoo.Built(model, (torch.randn(2, 8),), ["0", "1"])

    rec = zoo.run_case(zoo.Case("tiny-all-ignored", "test", build), "torch-pruning")
    assert rec["status"] == "fail" and rec["stage"] == "check"
    assert rec["param_drop"] == 0.0 and "params dropped only" in rec["error"]


def test_harness_records_a_build_error():
    def build():
        raise RuntimeError("cannot build")

    rec = zoo.run_case(zoo.Case("broken", "test", build), "torch-pruning")
    assert (rec["status"], rec["stage"], rec["error_type"], rec["error"]) == ("fail", "build", "RuntimeError",
                                                                              "cannot build")


def test_flat_shapes_walks_nested_outputs():
    out = {"logits": torch.zeros(2, 3), "aux": (torch.zeros(4), [torch.zeros(1, 5)])}
    assert zoo.flat_shapes(out) == [(".logits", (2, 3)), (".aux[0]", (4,)), (".aux[1][0]", (1, 5))]
    assert zoo.flat_shapes(out, keys=("logits",)) == [(".logits", (2, 3))]
    assert zoo.flat_shapes([{"boxes": torch.zeros(7, 4)}], dynamic_dim0=True) == [("[0].boxes", (4,))]


@pytest.mark.zoo
@pytest.mark.parametrize("name", [c.name for c in zoo.all_cases()])
def test_prunekit_passes_whole_zoo(name):
    rec = zoo.run_case(zoo.get(name), "prunekit")
    assert rec["status"] == "pass", f"{name}: {rec.get('stage')}: {rec.get('error_type')}: {rec.get('error')}"
    assert rec["params_after"] <= (1 - zoo.MIN_PARAM_DROP) * rec["params_before"]


def _without_ignore(built):
    built.ignore = []
    return built


def test_masked_twin_check_passes_an_exact_model_and_catches_a_wrong_cut(monkeypatch):
    # resnet18's groups are exact: the pruned model equals its masked twin in float64
    rec = zoo.run_case(zoo.get("tv:resnet18"), "prunekit", equivalence=True)
    assert rec["status"] == "pass" and rec["equivalent"] is True and rec["max_abs_diff"] < 1e-9
    # a twin that differs from what was cut (one input channel of a kept layer changed) is caught
    import prunekit.testing

    original = prunekit.testing.zero_removed_

    def zero_and_disturb(model, plan):
        original(model, plan)
        with torch.no_grad():
            model.layer1[0].conv1.weight[:, 0].add_(1.0)

    monkeypatch.setattr(prunekit.testing, "zero_removed_", zero_and_disturb)
    check = zoo.masked_twin_check(zoo.get("tv:resnet18").build())
    assert check["equivalent"] is False and check["max_abs_diff"] > 1e-3
