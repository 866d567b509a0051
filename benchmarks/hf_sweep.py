"""Every Hugging Face transformers architecture: structural pruning at sparsity 0.5, prunekit next to Torch-Pruning.

The architectures are the classes of the installed transformers' auto mappings (``MODEL_MAPPING_NAMES`` for
the base models and every ``MODEL_FOR_*_MAPPING_NAMES`` task head), one case per class. Each is built with
random weights from its config type's default config scaled down generically (:func:`scale_config`: 2 layers
for every ``*layers*`` count and ``depths`` entry, hidden 64 / FFN 128 / 4 heads / head_dim 16 where the heads
are one number, vocabulary 256 with the special token ids moved inside it, images 64 px, short audio,
``use_cache=False``, 10 labels). Inputs come from the forward signature (:func:`make_inputs`): input_ids +
attention_mask for text, pixel_values for vision, input_values / input_features for audio, both for
multimodal, decoder_input_ids for encoder-decoders; the first candidate whose forward runs is used.

Three tools per architecture (one worker subprocess each, ``benchmarks/zoo_coverage.py``'s workers and time
limit, resumable JSONL):
  * ``prunekit``: ``pk.prune_(model, example_inputs=x, sparsity=0.5, ignore=heads)``, every output keeps its
    shape (the default contract);
  * ``prunekit-task``: the same with ``keep_outputs=`` the task outputs (every top-level output that is not a
    hidden state / attention map: ``logits``, ``pooler_output``, ``text_embeds``...), run only where the model
    has such outputs and others besides; the outputs that may change are listed (``Report.outputs_changed``);
  * ``torch-pruning``: ``MetaPruner(..., MagnitudeImportance(p=2), pruning_ratio=0.5, ignored_layers=heads)``.
The heads are the leaf layers whose output is (a view of) a task output, plus every Linear/conv of width
10 (the labels) or the vocabulary size. A tool passes when pruning succeeds, the pruned model runs, the checked
outputs keep their shapes (prunekit: every output; prunekit-task and Torch-Pruning: the task outputs, or every
output where the model has none) and the parameter count drops by at least 20%. For prunekit the pruned model
then goes through ``save_pretrained`` -> ``from_pretrained`` when its config followed the new widths
(``Report.config_changes`` and no ``model.config`` note in ``Report.skipped``), and the reloaded outputs must
equal the pruned model's.

Usage (from the repository root):
    python benchmarks/hf_sweep.py                       # the default: 10 named + 2 per modality at random (minutes)
    nice -n 10 python benchmarks/hf_sweep.py --all      # every architecture (hours; resumable)
    python benchmarks/hf_sweep.py --report-only [--all]
"""
from __future__ import annotations

import argparse
import collections
import gc
import inspect
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import zoo  # noqa: E402
from benchmarks import zoo_coverage as zc  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TOOLS = ("prunekit", "prunekit-task", "torch-pruning")
PER_MODALITY, SEED = 2, 0
# always in the default sample beside the random draw: the architectures issue 16 names, one per modality at least
CURATED = ("bert/BertModel", "bert/BertForSequenceClassification", "clip/CLIPModel", "bart/BartModel",
           "t5/T5ForConditionalGeneration", "llama/LlamaForCausalLM", "vit/ViTForImageClassification",
           "convnext/ConvNextForImageClassification", "whisper/WhisperForConditionalGeneration",
           "wav2vec2/Wav2Vec2ForCTC")
MODALITIES = ("text", "encoder-decoder", "vision", "audio", "multimodal", "other")
VOCAB, SEQ, DEC_SEQ, BATCH, IMAGE, LABELS = 256, 16, 8, 2, 64, zoo.NUM_CLASSES
HIDDEN, FFN, HEADS, KV_HEADS, HEAD_DIM, MAX_POS = 64, 128, 4, 2, 16, 512
# top-level outputs that carry the hidden stream or attention maps, not a task result
_HIDDEN_OUT = re.compile(r"(hidden_state|attentions|past_key_values|_model_output$|^extract_features$|"
                         r"^feature_maps$|cache|^encoder_outputs?$)")
_ROUNDTRIP_ATOL = 1e-5


# ------------------------------------------------------------------ the architectures
def architectures() -> list[tuple[str, str, str]]:
    """``[(case name, config model_type, class name)]`` for every class of the auto model mappings."""
    from transformers.models.auto import modeling_auto as ma

    seen: dict[str, tuple[str, str]] = {}
    for attr in sorted(a for a in dir(ma) if a.startswith("MODEL") and a.endswith("_MAPPING_NAMES")):
        for model_type, classes in getattr(ma, attr).items():
            for cls in (classes if isinstance(classes, (list, tuple)) else (classes,)):
                seen.setdefault(cls, (model_type, attr))
    return sorted((f"hfa:{mt}/{cls}", mt, cls) for cls, (mt, _) in seen.items())


def describe(names: list[tuple[str, str, str]], cache: Path) -> dict[str, dict]:
    """``{case: {"family", "modality"} or {"family", "error"}}``: the modality from the class's forward
    signature and its default config (cached: importing every model module takes a while)."""
    import transformers

    known = json.loads(cache.read_text()) if cache.exists() else {}
    todo = [t for t in names if t[0] not in known]
    for i, (case, mt, cls) in enumerate(todo):
        rec: dict[str, Any] = {"family": mt}
        try:
            klass = getattr(transformers, cls)
            config = transformers.CONFIG_MAPPING[mt]()
            rec["modality"] = modality_of(set(inspect.signature(klass.forward).parameters),
                                          bool(getattr(config, "is_encoder_decoder", False)))
        except Exception as e:  # noqa: BLE001 - an architecture without a default config is listed with why
            rec["error"] = f"{type(e).__name__}: {str(e).strip()[:200]}"
        known[case] = rec
        if i % 100 == 99 or i == len(todo) - 1:
            cache.write_text(json.dumps(known, indent=0, sort_keys=True))
    return {t[0]: known[t[0]] for t in names}


def modality_of(params: set[str], encoder_decoder: bool) -> str:
    if params & {"input_values", "input_features"}:
        return "audio"
    if params & {"pixel_values", "pixel_values_videos"}:
        return "multimodal" if "input_ids" in params else "vision"
    if "input_ids" in params or "inputs_embeds" in params:
        return "encoder-decoder" if encoder_decoder else "text"
    return "other"


# ------------------------------------------------------------------ scaled-down config
_LAYERS = re.compile(r"(^|_)(num_)?(hidden_)?layers?$|^n_layers?$|^num_.*layers|^(encoder|decoder)_layers$|"
                     r"^num_.*_layers$")
_HID = {"hidden_size", "d_model", "n_embd", "embed_dim", "dim", "d_embed", "word_embed_proj_dim", "n_embed"}
_FFN = {"intermediate_size", "ffn_dim", "d_ff", "n_inner", "encoder_ffn_dim", "decoder_ffn_dim",
        "moe_intermediate_size", "shared_expert_intermediate_size", "decoder_hidden_size", "hidden_dim"}
_HEADS = re.compile(r"^(num_attention_heads|n_head|n_heads|num_heads|encoder_attention_heads|"
                    r"decoder_attention_heads)$")
_TOKEN_ID = re.compile(r"token_(id|index|ids)$")


def _is_sub(v: Any) -> bool:
    return isinstance(v, dict) and ("model_type" in v or "hidden_size" in v or "d_model" in v)


def _scale(d: dict, ids: list[int]) -> None:
    """Scale one config dict in place (recursing into sub-configs); ``ids`` hands out free token ids."""
    heads_int = any(_HEADS.match(k) and isinstance(v, int) for k, v in d.items())
    heads_list = any(_HEADS.match(k) and isinstance(v, list) for k, v in d.items())
    old_layers = {}
    # a count that sizes a per-layer list of another name (wav2vec2's conv_dim / num_feat_extract_layers) stays
    list_lens = {len(v) for k, v in d.items() if isinstance(v, list) and "layer" not in k}
    for k, v in list(d.items()):
        if _is_sub(v):
            _scale(v, ids)
        elif isinstance(v, bool) or v is None:
            continue
        elif isinstance(v, int) and (_LAYERS.search(k) or k == "n_layer") and "head" not in k and v > 2 \
                and v not in list_lens:
            old_layers[v] = 2
            d[k] = 2
        elif isinstance(v, int) and k in _HID and heads_int and v > HIDDEN:
            d[k] = HIDDEN
        elif isinstance(v, int) and k in _FFN and v > FFN:
            d[k] = FFN
        elif isinstance(v, int) and _HEADS.match(k) and v > HEADS:
            d[k] = HEADS
        elif k == "num_key_value_heads" and isinstance(v, int):
            heads = next((x for kk, x in d.items() if _HEADS.match(kk) and isinstance(x, int)), v)
            d[k] = HEADS if v == heads else min(v, KV_HEADS)
        elif k in ("head_dim", "d_kv", "attention_head_dim", "qk_nope_head_dim", "v_head_dim") and isinstance(v, int):
            d[k] = HEAD_DIM
        elif k == "qk_rope_head_dim" and isinstance(v, int):
            d[k] = 8
        elif k in ("kv_lora_rank", "q_lora_rank") and isinstance(v, int):
            d[k] = 32
        elif k == "vocab_size" and isinstance(v, int) and v > VOCAB:
            d[k] = VOCAB
        elif k in ("max_position_embeddings", "n_positions", "max_target_positions") and isinstance(v, int):
            d[k] = min(v, MAX_POS)
        elif k == "max_source_positions" and isinstance(v, int):
            d[k] = min(v, 32)
        elif k == "image_size" and isinstance(v, int) and v > IMAGE:
            d[k] = IMAGE
        elif k == "image_size" and isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) for x in v):
            d[k] = [min(x, IMAGE) for x in v]
        elif k == "depths" and isinstance(v, list) and all(isinstance(x, int) for x in v):
            d[k] = [min(x, 2) for x in v]
        elif k in ("hidden_sizes", "embed_dims", "conv_dim", "neck_hidden_sizes") and isinstance(v, list) \
                and all(isinstance(x, int) for x in v) and not heads_list:
            d[k] = [max(8, x // 4) for x in v] if k != "conv_dim" else [min(x, 32) for x in v]
        elif k == "num_conv_pos_embeddings" and isinstance(v, int):
            d[k] = min(v, 16)
        elif _TOKEN_ID.search(k) and isinstance(v, int) and v >= VOCAB:
            d[k] = ids.pop()
        elif _TOKEN_ID.search(k) and isinstance(v, list) and all(isinstance(x, int) for x in v):
            d[k] = [x if x < VOCAB else ids.pop() for x in v]
    for k, v in list(d.items()):  # per-layer lists follow the layer count
        if "layer" in k and isinstance(v, list) and len(v) in old_layers and len(v) > 2:
            d[k] = v[:2]
    if "use_cache" in d:
        d["use_cache"] = False


def scale_config(config):
    """A copy of a transformers config scaled down generically (see the module docstring)."""
    d = config.to_dict()
    for k in ("id2label", "label2id"):
        d.pop(k, None)
    d.pop("transformers_version", None)
    ids = list(range(VOCAB - 40, VOCAB))  # free ids for special tokens, handed out from the top
    _scale(d, ids)
    d["num_labels"] = LABELS
    d["use_cache"] = False
    return type(config).from_dict(d)


def build_model(model_type: str, class_name: str):
    import transformers

    config = scale_config(transformers.CONFIG_MAPPING[model_type]())
    klass = getattr(transformers, class_name)
    try:
        model = klass(config)
    except Exception:  # some heads take the text/vision sub-config: from_config resolves that
        model = klass._from_config(config)
    return model.eval()


# ------------------------------------------------------------------ inputs
def _cfg_get(config, *keys, default=None):
    for c in (config, getattr(config, "vision_config", None), getattr(config, "text_config", None),
              getattr(config, "audio_config", None), getattr(config, "encoder", None)):
        if c is None:
            continue
        for k in keys:
            v = getattr(c, k, None)
            if v is not None:
                return v
    return default


def input_candidates(model) -> list[dict]:
    """Candidate keyword inputs of ``model``'s forward, most plausible first."""
    import torch

    config = model.config
    params = set(inspect.signature(model.forward).parameters)
    vocab = _cfg_get(config, "vocab_size", default=VOCAB)
    hi = max(5, min(vocab, VOCAB - 40))
    base: dict[str, Any] = {}
    if "input_ids" in params:
        base["input_ids"] = torch.randint(4, hi, (BATCH, SEQ))
        if "attention_mask" in params:
            base["attention_mask"] = torch.ones(BATCH, SEQ, dtype=torch.long)
    if "decoder_input_ids" in params and getattr(config, "is_encoder_decoder", False):
        dec_vocab = _cfg_get(getattr(config, "decoder", config), "vocab_size", default=vocab)
        base["decoder_input_ids"] = torch.randint(4, max(5, min(dec_vocab, VOCAB - 40)), (BATCH, DEC_SEQ))
    cands: list[dict] = []
    if "pixel_values" in params:
        size = _cfg_get(config, "image_size", default=IMAGE)
        h, w = (size, size) if isinstance(size, int) else tuple(size)[:2]
        ch = _cfg_get(config, "num_channels", default=3)
        cands.append({**base, "pixel_values": torch.randn(BATCH, ch, h, w)})
        if "input_ids" in base:
            cands.append({"pixel_values": torch.randn(BATCH, ch, h, w)})
    if "input_values" in params:
        cands.append({"input_values": torch.randn(BATCH, 8000)})
        cands.append({"input_values": torch.randn(BATCH, 1, 8000)})
    if "input_features" in params:
        mel = _cfg_get(config, "num_mel_bins", "feature_size", "input_feat_per_channel", default=80)
        frames = 2 * (_cfg_get(config, "max_source_positions", default=32) or 32)
        chans = _cfg_get(config, "input_channels", default=1) or 1
        extra = {k: v for k, v in base.items() if k == "decoder_input_ids"}
        cands.append({"input_features": torch.randn(BATCH, mel, frames), **extra})
        cands.append({"input_features": torch.randn(BATCH, frames, mel * chans), **extra})
    if not cands and base:
        cands.append(base)
    return cands


def make_inputs(model) -> tuple[dict, Any]:
    """The first candidate input whose forward runs, and that forward's output."""
    sig = inspect.signature(model.forward).parameters
    cands = input_candidates(model)
    required = [n for n, p in sig.items() if p.default is inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and all(n not in c for c in cands)]
    if required:
        raise ValueError(f"the forward requires {', '.join(required)}, which the generator does not make")
    errors = []
    for inp in cands:
        try:
            return inp, zoo.call(model, inp)
        except Exception as e:  # noqa: BLE001 - try the next candidate
            errors.append(f"{type(e).__name__}: {str(e).strip()[:200]}")
    if not errors:
        raise ValueError("no input could be generated from the forward signature")
    raise RuntimeError(errors[0])  # the most plausible candidate's error


# ------------------------------------------------------------------ outputs and heads
def top_outputs(out: Any) -> list[str]:
    """Top-level names of a dict / ModelOutput return whose value holds a tensor (indices for tuples)."""
    import torch

    def has_tensor(v):
        if isinstance(v, torch.Tensor):
            return True
        if isinstance(v, (list, tuple)):
            return any(has_tensor(x) for x in v)
        if isinstance(v, dict):
            return any(has_tensor(x) for x in v.values())
        return hasattr(v, "keys") and any(has_tensor(v[k]) for k in v.keys())

    if hasattr(out, "keys"):
        return [k for k in out.keys() if has_tensor(out[k])]
    if isinstance(out, (list, tuple)):
        return [str(i) for i, v in enumerate(out) if has_tensor(v)]
    return []


def task_outputs(out: Any) -> list[str]:
    return [k for k in top_outputs(out) if not _HIDDEN_OUT.search(k)]


def find_heads(model, inputs: dict, task_keys: list[str]) -> list[str]:
    """Per task output tensor, the leaf layer that produced it (its storage, so views count) or else the last
    leaf layer run whose output had its shape (a pooler's dense before the tanh, a projection before the
    normalisation); plus every Linear/conv of the labels' or the vocabulary's width (the zoo's head finder)."""
    import torch
    from torch import nn

    # the layers' outputs are held until the end, so no freed storage is reused by an output (a false match)
    produced: list[tuple[str, Any]] = []
    hooks = []
    for name, mod in model.named_modules():
        if name and zoo._is_leaf_layer(mod) and not isinstance(mod, nn.Embedding):
            hooks.append(mod.register_forward_hook(
                lambda m, a, o, name=name: produced.append((name, o)) if isinstance(o, torch.Tensor) else None))
    try:
        out = zoo.call(model, inputs)
    finally:
        for h in hooks:
            h.remove()
    by_ptr = {o.untyped_storage().data_ptr(): name for name, o in produced}
    heads = set()
    for key in task_keys:
        for t in _tensors(out[key] if hasattr(out, "keys") else out[int(key)]):
            name = by_ptr.get(t.untyped_storage().data_ptr())
            if name is None:
                name = next((n for n, o in reversed(produced) if o.shape == t.shape), None)
            if name is not None:
                heads.add(name)
    vocab = _cfg_get(model.config, "vocab_size", default=VOCAB)
    for width in {LABELS, vocab}:
        heads.update(n for n in zoo._heads_by_width(model, width)
                     if not isinstance(dict(model.named_modules())[n], nn.Embedding))
    return sorted(heads)


def _tensors(v: Any) -> list:
    import torch

    if isinstance(v, torch.Tensor):
        return [v]
    if isinstance(v, (list, tuple)):
        return [t for x in v for t in _tensors(x)]
    if hasattr(v, "keys"):
        return [t for k in v.keys() for t in _tensors(v[k])]
    return []


# ------------------------------------------------------------------ one case
def run_arch(case: str, tool: str, seed: int = 0) -> dict:
    """Build ``case`` (``hfa:<model_type>/<Class>``), prune it with ``tool`` and check the pass criterion."""
    import torch

    torch.manual_seed(seed)
    model_type, cls = case.split(":", 1)[1].split("/", 1)
    rec: dict[str, Any] = {"model": case, "family": model_type, "tool": tool}
    t0 = time.perf_counter()
    stage = "build"
    try:
        model = build_model(model_type, cls)
        stage = "inputs"
        inputs, out = make_inputs(model)
        rec["inputs"] = sorted(inputs)
        all_keys, task_keys = top_outputs(out), task_outputs(out)
        rec["task_outputs"] = task_keys
        stage = "heads"
        heads = find_heads(model, inputs, task_keys)
        rec["ignore"] = heads
        keep = None
        if tool == "prunekit-task":
            if not task_keys or task_keys == all_keys or not hasattr(out, "keys"):
                rec.update(status="n/a", reason="no task output beside the hidden states" if not task_keys
                           else "every output is a task output")
                rec["seconds"] = round(time.perf_counter() - t0, 2)
                return rec
            keep = task_keys
        check = None if tool == "prunekit" or not task_keys or not hasattr(out, "keys") else tuple(task_keys)
        before = zoo.flat_shapes(out, check)
        p0 = zoo.n_params(model)
        stage = "prune"
        t1 = time.perf_counter()
        report = None
        if tool.startswith("prunekit"):
            import prunekit as pk

            kw = {"keep_outputs": keep} if keep else {}
            report = pk.prune_(model, example_inputs=inputs, sparsity=zoo.SPARSITY, ignore=heads, **kw)
        else:
            zoo.prune_with(tool, zoo.Built(model, inputs, heads))
        rec["prune_s"] = round(time.perf_counter() - t1, 3)
        p1 = zoo.n_params(model)
        rec.update(params_before=p0, params_after=p1, param_drop=round(1 - p1 / p0, 4) if p0 else 0.0)
        if report is not None:
            rec["outputs_changed"] = list(report.outputs_changed)
            rec["config_changes"] = {k: list(v) for k, v in report.config_changes.items()}
            rec["config_note"] = [s["reason"][:200] for s in report.skipped if s.get("where") == "model.config"]
        stage = "forward-after"
        pruned_out = zoo.call(model, inputs)
        after = zoo.flat_shapes(pruned_out, check)
        stage = "check"
        if after != before:
            diff = [(a, b) for a, b in zip(before, after) if a != b][:3]
            raise AssertionError(f"output shapes changed: {diff or (len(before), len(after))}")
        if rec["param_drop"] < zoo.MIN_PARAM_DROP:
            raise AssertionError(f"params dropped only {rec['param_drop']:.1%} (< {zoo.MIN_PARAM_DROP:.0%})")
        rec["status"] = "pass"
        if report is not None:
            rec["roundtrip"] = roundtrip(model, inputs, pruned_out, keep or all_keys, rec)
    except Exception as e:  # the harness records every failure, whatever its type
        rec["status"] = "fail"
        rec["stage"] = stage
        rec["error_type"] = type(e).__name__
        rec["error"] = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        for attr in ("fqn", "op"):
            if getattr(e, attr, None) is not None:
                rec[attr] = str(getattr(e, attr))
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    gc.collect()
    return rec


def roundtrip(model, inputs: dict, pruned_out: Any, keys: list[str], rec: dict) -> str:
    """``save_pretrained`` -> ``from_pretrained`` of a pruned model whose config followed: "equal", "differs
    ...", "error ...", or why it was not tried."""
    import torch

    if rec.get("config_note"):
        return "not tried: model.config note in Report.skipped"
    if not rec.get("config_changes"):
        return "not tried: no config change"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            reloaded = type(model).from_pretrained(tmp).eval()
        again = zoo.call(reloaded, inputs)
        worst = 0.0
        for k in keys:
            a = _tensors(pruned_out[k] if hasattr(pruned_out, "keys") else pruned_out[int(k)])
            b = _tensors(again[k] if hasattr(again, "keys") else again[int(k)])
            if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
                return f"differs: output {k} has other shapes after reloading"
            for x, y in zip(a, b):
                if x.is_floating_point():
                    worst = max(worst, float((x - y).abs().max()) if x.numel() else 0.0)
                elif not torch.equal(x, y):
                    return f"differs: output {k}"
        return "equal" if worst <= _ROUNDTRIP_ATOL else f"differs: max |delta| {worst:.2e} in the kept outputs"
    except Exception as e:  # noqa: BLE001 - a failed round trip is a finding, recorded with its error
        return f"error: {type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"


# ------------------------------------------------------------------ workers and driver
def worker(tool: str) -> None:
    """Read case names from stdin, one per line; write one ``RESULT <json>`` line per case."""
    import torch

    torch.set_num_threads(int(os.environ.get("ZOO_THREADS", "1")))
    engine = zc.engine_version()
    for line in sys.stdin:
        name = line.strip()
        if name:
            rec = run_arch(name, tool)
            if tool.startswith("prunekit"):
                rec["engine"] = engine
            sys.stdout.write("RESULT " + json.dumps(rec) + "\n")
            sys.stdout.flush()


class Worker(zc.Worker):
    """``zoo_coverage``'s worker process, running this file's :func:`worker`."""

    def __init__(self, tool: str, threads: int):
        import subprocess

        env = dict(os.environ, ZOO_THREADS=str(threads), PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads),
                   TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
        self.log = open(Path(tempfile.gettempdir()) / f"prunekit_hf_sweep_{tool}.log", "ab")
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", tool],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     env=env, cwd=str(ROOT), start_new_session=True)
        self.buf = b""


_NOT_BUILT = ("build", "inputs")


def run_all(tools: list[str], names: list[str], jsonl: Path, limit_s: float, threads: int = 1) -> None:
    """Every architecture with every tool, skipping recorded pairs; an architecture that does not build (or
    gets no runnable input) with the first tool is recorded so for the others without running them."""
    done = zc.load_records(jsonl)
    todo = [n for n in names if any((n, t) not in done for t in tools)]
    print(f"{len(todo)} of {len(names)} architectures to run", flush=True)
    workers: dict[str, Worker] = {}
    for i, name in enumerate(todo):
        first = None
        for tool in tools:
            if (name, tool) in done:
                first = first or done[(name, tool)]
                continue
            if first is not None and first.get("stage") in _NOT_BUILT:
                rec = {**first, "tool": tool, "seconds": 0.0}
                rec.pop("engine", None)
            else:
                w = workers.get(tool)
                if w is None or w.proc.poll() is not None:
                    w = workers[tool] = Worker(tool, threads)
                t0 = time.perf_counter()
                rec = w.run(name, limit_s)
                if rec is None:
                    timed_out = time.perf_counter() - t0 >= limit_s - 1
                    rec = {"model": name, "family": name.split(":", 1)[1].split("/")[0], "tool": tool,
                           "status": "fail", "stage": "timeout" if timed_out else "crash",
                           "error_type": "Timeout" if timed_out else "WorkerCrash",
                           "error": f"no result within {limit_s:.0f} s" if timed_out
                           else f"worker exited with code {w.proc.returncode}",
                           "seconds": round(time.perf_counter() - t0, 1)}
                    w.close()
                    del workers[tool]
            first = first or rec
            with jsonl.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            print(f"[{tool}] {i + 1}/{len(todo)} {name}: {rec['status']} {rec.get('param_drop', '')} "
                  f"{rec.get('stage', '')} {rec.get('error_type', '')} {rec.get('error', '')[:100]} "
                  f"{rec.get('roundtrip', '')[:40]} ({rec['seconds']} s)", flush=True)
    for w in workers.values():
        w.close()


def choose(names: list[str], info: dict, per_modality: int | None, seed: int) -> list[str]:
    """All architectures, or :data:`CURATED` and a fixed random sample of ``per_modality`` per modality."""
    if per_modality is None:
        return names
    rng = random.Random(seed)
    out = [n for n in (f"hfa:{c}" for c in CURATED) if n in info]
    for mod in MODALITIES:
        members = sorted(n for n in names if info[n].get("modality") == mod)
        out += rng.sample(members, min(per_modality, len(members)))
    return sorted(set(out))


# ------------------------------------------------------------------ Markdown
def _median(xs):
    return statistics.median(xs) if xs else None


def write_markdown(jsonl: Path, md: Path, names: list[str], info: dict, command: str, limit_s: float) -> None:
    recs = zc.load_records(jsonl)
    run = [n for n in names if any((n, t) in recs for t in TOOLS)]
    built = [n for n in run if (r := recs.get((n, "prunekit"))) and r.get("stage") not in _NOT_BUILT]
    lines = [
        "# Every Hugging Face transformers architecture: prunekit next to Torch-Pruning",
        "",
        f"Produced by `{command}` (per-architecture limit {limit_s:.0f} s per tool, one thread); rendered from"
        f" `{jsonl.relative_to(ROOT)}` by `python benchmarks/hf_sweep.py --report-only"
        f"{' --all' if command.endswith('--all') else ''}`.",
        f"Machine: {zc.machine()}. Versions: {zc.versions()}; prunekit engine version(s):"
        f" {', '.join(sorted({r.get('engine', 'unrecorded') for r in recs.values() if r['tool'] == 'prunekit'})) or 'none'}.",
        "",
        "Each architecture (a class of the auto mappings: base model or task head) is built with random weights"
        " from its config type's default config scaled down (2 layers, hidden 64, 4 heads, vocabulary 256,"
        " 64 px images, short audio, `use_cache=False`), with inputs generated from its forward signature, and"
        " pruned at sparsity 0.5 with its heads ignored. **prunekit** keeps every output's shape (the default);"
        " **prunekit task** passes `keep_outputs=` the task outputs (all top-level outputs but hidden states and"
        " attention maps; run where the model has both kinds); **Torch-Pruning** is `MetaPruner(...,"
        " MagnitudeImportance(p=2), pruning_ratio=0.5, ignored_layers=heads)`. A tool passes when pruning"
        " succeeds, the pruned model runs, the checked outputs keep their shapes (prunekit: all; the others: the"
        " task outputs, or all where there is none) and at least 20% of the parameters go. **Round trip**:"
        " passing prunekit models whose `model.config` followed (`Report.config_changes`, no config note in"
        " `Report.skipped`) are saved with `save_pretrained`, reloaded with `from_pretrained`, and the reloaded"
        " outputs compared with the pruned model's (equal within 1e-5).",
        "",
        f"Architectures: {len(names)}; run: {len(run)}; built (scaled default config + generated inputs ran):"
        f" {len(built)}.",
        "",
    ]

    def summary(label: str, members: list[str]) -> str:
        c = collections.Counter()
        t = collections.defaultdict(list)
        d = collections.defaultdict(list)
        for n in members:
            if any((n, tool) in recs for tool in TOOLS):
                c["run"] += 1
            r0 = recs.get((n, "prunekit"))
            if r0 is not None and r0.get("stage") not in _NOT_BUILT:
                c["built"] += 1
            for tool in TOOLS:
                r = recs.get((n, tool))
                if r is None or r.get("stage") in _NOT_BUILT or r["status"] == "n/a":
                    continue
                c[f"{tool}_run"] += 1
                if r["status"] == "pass":
                    c[f"{tool}_pass"] += 1
                    t[tool].append(r.get("prune_s", 0.0))
                    d[tool].append(r.get("param_drop", 0.0))
                if tool.startswith("prunekit") and "roundtrip" in r:  # both prunekit ways
                    tried = not r["roundtrip"].startswith("not tried")
                    c["rt_tried"] += tried
                    c["rt_equal"] += r["roundtrip"] == "equal"

        def tm(tool):
            return f"{_median(t[tool]):.2f} / {max(t[tool]):.2f}" if t[tool] else "-"

        def dr(tool):
            return f"{_median(d[tool]):.1%}" if d[tool] else "-"
        return (f"| {label} | {len(members)} | {c['run']} | {c['built']} | {c['prunekit_pass']} / {c['prunekit_run']}"
                f" | {c['prunekit-task_pass']} / {c['prunekit-task_run']} | {c['torch-pruning_pass']} /"
                f" {c['torch-pruning_run']} | {tm('prunekit')} | {tm('prunekit-task')} | {tm('torch-pruning')} |"
                f" {dr('prunekit')} | {dr('prunekit-task')} | {dr('torch-pruning')} | {c['rt_equal']} / {c['rt_tried']} |")

    head = ("| {} | architectures | run | built | prunekit pass / run | prunekit task pass / run | Torch-Pruning"
            " pass / run | prunekit prune s (median / worst) | prunekit task s | Torch-Pruning s | prunekit drop"
            " (median) | prunekit task drop | Torch-Pruning drop | round trip equal / tried |")
    sep = "|---|" + "---:|" * 13
    lines += ["## Per modality", "", head.format("modality"), sep]
    for mod in MODALITIES:
        members = [n for n in names if info[n].get("modality") == mod]
        if members:
            lines.append(summary(mod, members))
    unknown = [n for n in names if "error" in info[n]]
    if unknown:
        lines.append(summary("no default config", unknown))
    lines.append(summary("**all**", names))
    fams: dict[str, list[str]] = collections.defaultdict(list)
    for n in run:
        fams[info[n]["family"]].append(n)
    if len(fams) > 1:
        lines += ["", "## Per family (config type; architectures run)", "", head.format("family"), sep]
        lines += [summary(f, fams[f]) for f in sorted(fams)]

    def passed(n, tool):
        r = recs.get((n, tool))
        return r is not None and r["status"] == "pass"

    def failed(n, tool):
        r = recs.get((n, tool))
        return r is not None and r["status"] == "fail" and r.get("stage") not in _NOT_BUILT
    only_tp = [n for n in run if passed(n, "torch-pruning") and failed(n, "prunekit")
               and not passed(n, "prunekit-task")]
    lines += ["", f"Architectures Torch-Pruning passes and prunekit fails both ways ({len(only_tp)}): "
              + (", ".join(f"`{n[4:]}`" for n in only_tp) or "none") + ".", ""]
    for tool in ("prunekit", "prunekit-task", "torch-pruning"):
        causes: dict[str, list[str]] = collections.defaultdict(list)
        for n in run:
            if failed(n, tool):
                causes[zc.cause_of(recs[(n, tool)])].append(n[4:])
        if causes:
            lines += [f"## {tool} failures by cause", "", "| cause | architectures |", "|---|---|"]
            for cause, models in sorted(causes.items(), key=lambda kv: -len(kv[1])):
                lines.append(f"| {cause} | {len(models)}: " + ", ".join(f"`{m}`" for m in models) + " |")
            lines.append("")
    rts: dict[str, list[str]] = collections.defaultdict(list)
    for n in run:
        for tool in ("prunekit", "prunekit-task"):
            r = recs.get((n, tool))
            if r is not None and r.get("roundtrip") and r["roundtrip"] != "equal":
                rts[f"{tool}: " + re.sub(r"\d+(\.\d+)?(e-?\d+)?", "N", r["roundtrip"])[:160]].append(n[4:])
    if rts:
        lines += ["## Round trips not equal or not tried (both prunekit ways)", "", "| outcome | architectures |", "|---|---|"]
        for cause, models in sorted(rts.items(), key=lambda kv: -len(kv[1])):
            lines.append(f"| {cause.replace('|', '/')} | {len(models)}: " + ", ".join(f"`{m}`" for m in models) + " |")
        lines.append("")
    not_built = collections.defaultdict(list)
    for n in run:
        r = recs.get((n, "prunekit"))
        if r is not None and r.get("stage") in _NOT_BUILT:
            not_built[zc.cause_of(r)].append(n[4:])
    for n in unknown:
        not_built["no default config: " + re.sub(r"\d+", "N", info[n]["error"])[:140]].append(n[4:])
    if not_built:
        lines += ["## Not built from the scaled default config (with the reason)", "", "| reason | architectures |",
                  "|---|---|"]
        for cause, models in sorted(not_built.items(), key=lambda kv: -len(kv[1])):
            lines.append(f"| {cause.replace('|', '/')} | {len(models)}: " + ", ".join(f"`{m}`" for m in models) + " |")
        lines.append("")
    lines += ["## Per architecture", "", "| architecture | modality | prunekit | drop | s | round trip | prunekit task |"
              " drop | s | Torch-Pruning | drop | s |", "|---|---|---|---:|---:|---|---|---:|---:|---|---:|---:|"]
    for n in built:
        cells = []
        for tool in TOOLS:
            r = recs.get((n, tool))
            if r is not None and r["status"] == "n/a":
                cells += ["n/a", "", ""]
            else:
                cell, drop = zc._cell(r)
                cells += [cell, drop, f"{r['prune_s']:.2f}" if r and "prune_s" in r else ""]
            if tool == "prunekit":
                cells.append((r or {}).get("roundtrip", "").replace("|", "/")[:80])
        lines.append(f"| `{n[4:]}` | {info[n].get('modality', '?')} | " + " | ".join(cells) + " |")
    md.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", metavar="TOOL", help=argparse.SUPPRESS)
    ap.add_argument("--all", action="store_true", help="every architecture (default: a fixed sample)")
    ap.add_argument("--per-modality", type=int, default=PER_MODALITY, help="architectures per modality in the sample")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--limit-s", type=float, default=120.0, help="per architecture and tool, seconds")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0
    archs = architectures()
    names = [a[0] for a in archs]
    info = describe(archs, RESULTS / "hf_archs.json")
    chosen = choose(names, info, None if args.all else args.per_modality, args.seed)
    stem = "hf_all" if args.all else "hf_sample"
    jsonl, md = RESULTS / f"{stem}.jsonl", RESULTS / f"{stem}.md"
    if not args.report_only:
        tools = [t.strip() for t in args.tools.split(",") if t.strip()]
        todo = [n for n in chosen if "error" not in info[n]]
        if args.all:  # a fixed shuffle: a run stopped part way still covers every modality and family
            random.Random(args.seed).shuffle(todo)
        run_all(tools, todo, jsonl, args.limit_s)
    command = "nice -n 10 python benchmarks/hf_sweep.py --all" if args.all else \
        f"python benchmarks/hf_sweep.py --per-modality {args.per_modality} --seed {args.seed}"
    write_markdown(jsonl, md, chosen, info, command, args.limit_s)
    print(f"wrote {md}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
