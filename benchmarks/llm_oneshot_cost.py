"""Cost of Wanda and SparseGPT on the 1.1B LLaMA-shaped config of benchmarks/engine_speed.py.

The config is TinyLlama-1.1B's shape (hidden 2048, FFN 5632, 32 query / 4 key-value heads, vocabulary 32000,
22 decoder layers), random weights, bf16, built on the CPU. To fit this machine's time, only the first
``--layers K`` decoder layers are built (``num_hidden_layers=K``); per-block figures do not depend on K, and
the model's size is given for the full 22 layers. Calibration: ``--calib-seqs`` random token sequences of
``--seq-len`` tokens (the papers: 128 x 2048).

Per method and block: wall-clock and process CPU seconds (``block_seconds`` / ``block_cpu_seconds`` of the
sequential calibration: statistics pass, pruning of the block's 7 Linear layers, pass through the pruned
block; CPU seconds are the figure to read on a shared machine, wall-clock includes waiting) and the peak extra resident memory of the whole
method run, as the RSS high-water mark (``VmHWM``, reset through /proc/self/clear_refs) minus the RSS before
it. The method body is called directly, without the harness's transaction snapshot (which adds one copy of the
model). Written to benchmarks/results/llm_oneshot_cost.json.

Usage: nice python benchmarks/llm_oneshot_cost.py [--layers 2] [--calib-seqs 4] [--seq-len 128] [--threads 1]
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import time
import sys
from pathlib import Path

import torch

from prunekit.methods import RunContext, get_method, load_all

OUT = Path(__file__).parent / "results" / "llm_oneshot_cost.json"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.engine_speed import _reset_peak, _status_kb  # noqa: E402 (one peak-memory probe for both)
FULL_LAYERS = 22


def build(layers: int):
    import transformers

    cfg = transformers.LlamaConfig(hidden_size=2048, num_hidden_layers=layers, intermediate_size=5632,
                                   num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
                                   max_position_embeddings=2048, use_cache=False)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = transformers.LlamaForCausalLM(cfg).eval()
    finally:
        torch.set_default_dtype(torch.float32)
    return model, cfg


def measure(method: str, args) -> dict:
    model, cfg = build(args.layers)
    g = torch.Generator().manual_seed(0)
    calib = [(torch.randint(0, cfg.vocab_size, (1, args.seq_len), generator=g), None) for _ in range(args.calib_seqs)]
    spec = get_method(method)
    ctx = RunContext(model=model, example_inputs=calib[0][0], target="sparsity=0.5", calib=calib)
    ctx.target_kind, ctx.target_value = "sparsity", 0.5
    cfg_m = spec.resolve({})
    block = model.model.layers[0]
    block_params = sum(p.numel() for p in block.parameters())
    outside = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("model.layers."))
    gc.collect()
    rss0 = _status_kb("VmRSS")
    reset = _reset_peak()
    t0 = time.perf_counter()
    res = spec.fn(ctx, cfg_m)
    total = time.perf_counter() - t0
    peak = _status_kb("VmHWM")
    zeros = sum(int((m.weight == 0).sum()) for m in block.modules() if isinstance(m, torch.nn.Linear))
    lin = sum(m.weight.numel() for m in block.modules() if isinstance(m, torch.nn.Linear))
    out = {"method": method, "block_seconds": res.info["block_seconds"],
           "block_cpu_seconds": res.info["block_cpu_seconds"], "seconds_total": round(total, 2),
           "peak_extra_mb": round((peak - rss0) / 1024, 1) if reset else None, "peak_measure": "VmHWM - VmRSS before",
           "block_params": block_params, "block_mb_bf16": round(block_params * 2 / 2**20, 1),
           "model_params_full": block_params * FULL_LAYERS + outside,
           "model_gb_bf16_full": round((block_params * FULL_LAYERS + outside) * 2 / 2**30, 2),
           "block0_sparsity": round(zeros / lin, 4)}
    if method == "sparsegpt":
        out["rel_error"] = res.telemetry["rel_error"]
    del model, res, ctx
    gc.collect()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2, help="decoder layers built (the full config has 22)")
    ap.add_argument("--calib-seqs", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", nargs="+", default=["wanda", "sparsegpt"])
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_all()
    rows = []
    for m in args.methods:
        rows.append(measure(m, args))
        print(json.dumps(rows[-1]), flush=True)
    result = {"config": "TinyLlama-1.1B shape (hidden 2048, FFN 5632, 32/4 heads, vocab 32000), random, bf16",
              "layers_built": args.layers, "layers_full": FULL_LAYERS, "calib_seqs": args.calib_seqs,
              "seq_len": args.seq_len, "threads": args.threads, "device": "cpu", "machine": platform.processor() or
              platform.machine(), "torch": torch.__version__, "rows": rows,
              "command": f"python benchmarks/llm_oneshot_cost.py --layers {args.layers} --calib-seqs "
                         f"{args.calib_seqs} --seq-len {args.seq_len} --threads {args.threads}"}
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
