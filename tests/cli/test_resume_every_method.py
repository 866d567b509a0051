"""Every method's own training resumes bit-identically from a checkpoint in the middle of it.

Each registered method that trains before its cut runs on the contract tests' tiny synthetic setting inside
``fit_checkpoints`` (a checkpoint every step); a second run is interrupted (Ctrl-C) right after the middle
checkpoint and a third resumes from it. The resumed model (weights, buffers, masks) and the method's result
must equal the uninterrupted run's exactly.
"""
import json

import pytest
import torch

from prunekit import workflows as W
from prunekit.masks import get_masks
from prunekit.methods import METHODS, RunContext, get_method, load_all
from prunekit.train import checkpoint
from prunekit.train.resume_state import fit_checkpoints

load_all()
ONE_SHOT_LM = {"magnitude-llm", "wanda", "sparsegpt"}  # one-shot on a language model: no training to resume


def _ctx(spec):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    if spec.id in ("llm-width", "llm-depth"):  # they prune a decoder's heads/neurons/layers: gpt-tiny on tokens
        model = W.resolve_model("gpt-tiny", num_classes=64, in_channels=1, input_size=16)
        batches = [(x, torch.roll(x, -1, 1)) for x in (torch.randint(0, 64, (8, 16), generator=g) for _ in range(3))]
        return RunContext(model=model, example_inputs=batches[0][0][:1], target="macs=0.6", train_data=batches,
                          calib=batches[:2], options={**spec.smoke, "recovery_steps": 3})
    model = W.resolve_model("resnet20", in_channels=1, input_size=8)
    batches = [(torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g)) for _ in range(3)]
    target = "sparsity=0.5" if spec.kind == "unstructured" else "macs=0.6"
    return RunContext(model=model, example_inputs=batches[0][0][:2], target=target, train_data=batches,
                      val_data=batches[:1], calib=batches[:2], prune_epochs=2, options=dict(spec.smoke))


def _timeless(x):
    """``x`` without wall-clock fields (``seconds``, ``search_seconds``, ...): elapsed time differs by nature."""
    if isinstance(x, dict):
        return {k: _timeless(v) for k, v in x.items() if not str(k).endswith("seconds")}
    if isinstance(x, (list, tuple)):
        return [_timeless(v) for v in x]
    return x


def _run(spec, folder, resume=False):
    ctx = _ctx(spec)
    with fit_checkpoints(folder, resume=resume, every=1) as session:
        res = spec.run(ctx)
    state = {k: v.clone() for k, v in res.model.state_dict().items()}
    masks = {k: v.clone() for k, v in get_masks(res.model).items()}
    result = json.loads(json.dumps([res.info, res.telemetry], default=str))
    return state, masks, json.dumps(_timeless(result), sort_keys=True), session


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::prunekit.errors.MechanismWarning")
@pytest.mark.parametrize("mid", [m for m in METHODS.names() if m not in ONE_SHOT_LM])
def test_method_training_resumes_bit_identically(mid, tmp_path, monkeypatch):
    spec = get_method(mid)
    real, saves = checkpoint.save_checkpoint, []
    monkeypatch.setattr(checkpoint, "save_checkpoint",
                        lambda *a, **k: (saves.append(k["meta"]["step"]), real(*a, **k))[1])
    full_state, full_masks, full_result, session = _run(spec, tmp_path / "full")
    if not saves:
        pytest.skip(f"{mid} does not train before its cut (or its training is not checkpointed: {session.redone})")
    stop_at = len(saves) // 2 + 1

    def save_then_interrupt(*a, **k):
        path = real(*a, **k)
        saves.append(k["meta"]["step"])
        if len(saves) == stop_at:
            raise KeyboardInterrupt
        return path

    saves.clear()
    monkeypatch.setattr(checkpoint, "save_checkpoint", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        _run(spec, tmp_path / "cut")
    monkeypatch.setattr(checkpoint, "save_checkpoint", real)
    state, masks, result, _ = _run(spec, tmp_path / "cut", resume=True)
    assert state.keys() == full_state.keys()
    assert [k for k in state if not torch.equal(state[k], full_state[k])] == []
    assert masks.keys() == full_masks.keys() and all(torch.equal(masks[k], full_masks[k]) for k in masks)
    assert result == full_result
