"""Contract tests generated from every registry but the methods' (tests/methods/test_contract.py): channel
criteria (data-driven ones included), weight criteria, patterns, models, data sets and the graph's op rules.
A newly registered entry is tested without editing a list here.
"""
import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.criteria import CRITERIA
from prunekit.data import DATASETS
from prunekit.errors import ConfigError, DataError
from prunekit.graph.rules import RULES, rule
from prunekit.masks import get_masks
from prunekit.masks.criteria import WEIGHT_CRITERIA
from prunekit.masks.patterns import _EXAMPLES, PATTERNS, get_pattern
from prunekit.models import MODELS


def _convnet():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))


def _calib(n=2):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(n)]


@pytest.mark.parametrize("name", CRITERIA.names())
def test_every_channel_criterion_plans_to_the_target_with_finite_scores_and_changes_nothing(name):
    model = _convnet()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 1, 8, 8)
    calib = _calib()
    plan = pk.plan(model, x, target="macs=0.5", criterion=name, calib=calib, ignore=["10"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # plan changes nothing
    assert plan.groups and sum(g.removed for g in plan.groups) > 0
    m = pk.measure(model, x).macs
    report = pk.prune_(model, plan)
    assert pk.measure(model, x).macs <= 0.5 * m * 1.01
    assert report.params_after < report.params_before
    assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("name", WEIGHT_CRITERIA.names())
def test_every_weight_criterion_masks_exactly_the_requested_fraction_per_layer(name):
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    calib = [(x, y % 4) for x, y in _calib()]
    pk.sparsify_(mlp, sparsity=0.5, criterion=name, calib=calib)
    masks = get_masks(mlp)
    assert set(masks) == {"1.weight", "3.weight"}
    for fqn, mask in masks.items():
        assert int((~mask).sum()) == mask.numel() // 2, fqn
    assert float((mlp[1].weight == 0).float().mean()) == 0.5


@pytest.mark.parametrize("family", PATTERNS.names())
def test_every_pattern_family_has_an_example_whose_masks_pass_its_own_check(family):
    examples = [e for e in _EXAMPLES if (family == "nm" and ":" in e and e[0].isdigit()) or e.split(":")[0] == family]
    assert examples, f"pattern family {family!r} has no example in masks.patterns._EXAMPLES"
    for spec in examples:
        torch.manual_seed(0)
        mlp = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8))
        pattern = get_pattern(spec)
        fixed = getattr(pattern, "fixed_sparsity", None)
        pk.sparsify_(mlp, sparsity=None if fixed is not None else 0.5, pattern=spec)
        masks = get_masks(mlp)
        assert masks, spec
        for fqn, mask in masks.items():
            assert pattern.check(mask.reshape(mask.shape[0], -1)), (spec, fqn)
            removed = float((~mask).float().mean())
            assert removed == pytest.approx(fixed if fixed is not None else 0.5, abs=0.07), (spec, fqn, removed)


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_builds_forwards_its_example_input_and_has_prunable_groups(name):
    model = pk.models.create(name, num_classes=7, in_channels=1, input_size=16).eval()
    x = pk.models.example_inputs(model, batch=2)
    with torch.no_grad():
        out = model(x)
    logits = out[0] if isinstance(out, tuple) else out
    assert logits.shape[0] == 2 and logits.shape[-1] == 7 and torch.isfinite(logits).all()
    assert pk.inspect(model, x).groups, f"{name}: no prunable group"


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_data_set_loads_consistent_batches_or_says_how_to_get_it(name, tmp_path):
    try:
        bundle = pk.data.load(name, subset=(64, 32), batch_size=16, data_dir=str(tmp_path) if name in
                              ("cifar10", "cifar100", "imagefolder") else None)
    except (DataError, ConfigError) as e:  # no copy of the data on this machine: the error names the fix
        assert any(w in str(e) for w in ("data_dir", "data-dir", "apt", "install", "download", "pass ")), str(e)
        return
    x, y = next(iter(bundle.train))
    assert x.shape[0] == y.shape[0] <= 16
    assert int(y.max()) < bundle.num_classes
    if x.dim() == 4:
        assert x.shape[1] == bundle.in_channels


# ---- graph rules and handlers -------------------------------------------------------------------------------


def _op_exists(name: str) -> bool:
    namespace, _, op = name.rpartition(".")
    if namespace:  # a library's op, e.g. torchvision.roi_align: its library registers it on import
        pytest.importorskip(namespace)
        return hasattr(getattr(torch.ops, namespace), op)
    return hasattr(torch.ops.aten, name)


@pytest.mark.parametrize("name", sorted(n for n in RULES if n != "__pointwise__"))
def test_every_graph_rule_names_an_op_the_tracer_can_see(name):
    # the tracer looks a rule up by the op's name (``aten.`` dropped): a rule under a name no op has never runs
    assert _op_exists(name), f"graph rule {name!r} names no op of torch {torch.__version__}: it never runs"


def test_a_graph_rule_registered_twice_is_an_error_and_keeps_the_first():
    # (a handler registered twice: tests/graph/test_trace.py::test_register_handler_for_a_custom_op_restores_prunability)
    first = RULES["cat"]
    with pytest.raises(ConfigError, match="rule for op 'cat' is already registered"):
        rule("cat")(lambda rec, args, kwargs, out: None)
    assert RULES["cat"] is first


def test_a_refused_rule_registers_none_of_its_names():
    # names are checked before any is registered: a clash on the second name leaves the first unregistered
    with pytest.raises(ConfigError, match="rule for op 'cat' is already registered"):
        rule("prunekit_test_new_op", "cat")(lambda rec, args, kwargs, out: None)
    assert "prunekit_test_new_op" not in RULES
