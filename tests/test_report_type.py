"""prune_, sparsify_ and finalize_ return one Report type with the same core fields (issue 14, item 7)."""
import json

import pytest
import torch

import prunekit as pk
from prunekit.api import Report
from prunekit.testing import models

CORE = {"op", "params_before", "params_after", "macs_before", "macs_after", "sparsity", "sparsity_before", "groups",
        "layers", "skipped", "notes", "selection"}


def test_the_three_verbs_return_one_report_type_with_the_same_keys():
    m, x = models()["chain"]()
    pruned = pk.prune_(m, example_inputs=x, sparsity=0.5)
    masked = pk.sparsify_(m, sparsity=0.5, criterion="magnitude")
    final = pk.finalize_(m)
    assert type(pruned) is type(masked) is type(final) is Report
    assert [r.op for r in (pruned, masked, final)] == ["prune_", "sparsify_", "finalize_"]
    keys = [set(json.loads(r.to_json())) for r in (pruned, masked, final)]
    assert keys[0] == keys[1] == keys[2] and CORE <= keys[0]


def test_core_fields_mean_the_same_for_each_verb():
    m, x = models()["chain"]()
    n0 = sum(p.numel() for p in m.parameters())
    pruned = pk.prune_(m, example_inputs=x, sparsity=0.5)
    n1 = sum(p.numel() for p in m.parameters())
    assert (pruned.params_before, pruned.params_after) == (n0, n1)
    assert pruned.sparsity == 1 - n1 / n0 and pruned.sparsity_before == 0.0
    assert pruned.macs_after < pruned.macs_before and pruned.groups and not pruned.layers
    assert pruned.selection["criterion"] == "l2"

    masked = pk.sparsify_(m, sparsity=0.5)
    assert (masked.params_before, masked.params_after) == (n1, n1)  # a mask removes no parameter
    assert masked.macs_before is None and masked.macs_after is None  # nothing traced
    assert masked.sparsity == 0.5 and masked.sparsity_before == 0.0 and masked.layers and not masked.groups
    assert masked.selection == {"criterion": "magnitude", "pattern": "element", "allocation": "uniform",
                                "mode": "hard"}
    assert masked.criterion == "magnitude" and masked.pattern == "element"  # the former MaskReport fields

    again = pk.sparsify_(m, sparsity=0.75)
    assert again.sparsity_before == 0.5 and again.sparsity == pytest.approx(0.75, abs=0.01)  # rounded per layer

    final = pk.finalize_(m)
    assert final.sparsity == final.sparsity_before == again.sparsity and final.selection == {}
    w = [mod.weight for mod in m.modules() if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear))]
    assert sum(int((t == 0).sum()) for t in w) == final.pruned


def test_each_verb_prints_one_summary_line_first():
    m, x = models()["chain"]()
    lines = [str(pk.prune_(m, example_inputs=x, sparsity=0.5)).splitlines()[0],
             str(pk.sparsify_(m, sparsity=0.5)).splitlines()[0], str(pk.finalize_(m)).splitlines()[0]]
    assert lines[0].startswith("Pruned: params ")
    assert lines[1].startswith("sparsify_: ") and "sparsity 0.5000" in lines[1]
    assert lines[2].startswith("finalize_: ") and "sparsity 0.5000" in lines[2]
