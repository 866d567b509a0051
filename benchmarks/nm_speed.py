"""Does 2:4 (or 50% unstructured) sparsity make a language model's layers faster? Measured, not assumed.

One decoder block of the TinyLlama-1.1B shape (hidden 2048, FFN 5632, 32 query / 4 key-value heads; random
weights, as in ``benchmarks/engine_speed.py``), its seven Linear layers pruned by magnitude to 2:4 and to 50%
unstructured (``prunekit.sparsify_`` + ``finalize_``), then run through ``prunekit.masks.sparse.to_sparse_``:

- on the CPU: CSR weights (``torch.sparse.mm``), the only sparse layout with a CPU kernel in PyTorch;
  2:4 has no CPU kernel of its own, so a 2:4 block runs as CSR too;
- on a CUDA GPU (when one is present): PyTorch's semi-structured 2:4 tensors (``to_sparse_semi_structured``,
  fp16/bf16, CUTLASS/cuSPARSELt kernels) against the dense bf16 block.

Each sparse block is timed alternately with its dense twin in this process (median of ``--repeats`` after
warm-up), for 1 token (decoding) and 128 tokens (a prompt). Writes ``benchmarks/results/nm_speed.json``
(``--out``) with the machine it ran on.

    python benchmarks/nm_speed.py [--threads 2] [--repeats 20] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import transformers

import prunekit as pk
from prunekit.masks.sparse import to_sparse_

ROOT = Path(__file__).resolve().parents[1]


def block(dtype: torch.dtype) -> tuple[torch.nn.Module, transformers.LlamaConfig]:
    cfg = transformers.LlamaConfig(hidden_size=2048, num_hidden_layers=1, intermediate_size=5632,
                                   num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
                                   max_position_embeddings=2048, use_cache=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).to(dtype).eval()
    return model.model.layers[0], cfg


class BlockRunner(torch.nn.Module):
    """One decoder block called with the rotary embeddings its model would give it."""

    def __init__(self, layer, rotary):
        super().__init__()
        self.layer, self.rotary = layer, rotary

    def forward(self, h):
        pos = torch.arange(h.shape[1], device=h.device)[None]
        cos_sin = self.rotary(h, pos)
        out = self.layer(h, position_embeddings=cos_sin, attention_mask=None)
        return out[0] if isinstance(out, tuple) else out


def paired(a, b, x, repeats: int, sync) -> tuple[float, float]:
    ta, tb = [], []
    with torch.inference_mode():
        for _ in range(3):
            a(x), b(x)
        for _ in range(repeats):
            for m, store in ((a, ta), (b, tb)):
                sync()
                t0 = time.perf_counter()
                m(x)
                sync()
                store.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(ta), statistics.median(tb)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "nm_speed.json"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cuda = a.device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    layout = "semi_structured" if cuda else "csr"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    layer, cfg = block(dtype)
    rotary = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(cfg)
    dense = BlockRunner(layer, rotary).to(a.device).eval()
    rows = []
    for pattern, sparsity in (("2:4", None), ("element", 0.5)):
        if cuda and pattern != "2:4":
            continue  # the semi-structured kernels take 2:4 only
        sparse = copy.deepcopy(dense)
        kw = {"pattern": pattern} if sparsity is None else {"sparsity": sparsity}
        pk.sparsify_(sparse.layer, **kw)
        pk.finalize_(sparse.layer)
        x1 = torch.randn(1, 128, 2048, dtype=dtype, device=a.device)
        with torch.inference_mode():
            ref = sparse(x1)
        conv = to_sparse_(sparse.layer, layout=layout)
        with torch.inference_mode():
            err = float((sparse(x1) - ref).abs().max() / ref.abs().max())
        for tokens in (1, 128):
            x = torch.randn(1, tokens, 2048, dtype=dtype, device=a.device)
            td, ts = paired(dense, sparse, x, a.repeats, sync)
            rows.append({"pattern": pattern if sparsity is None else f"unstructured {sparsity:.0%}",
                         "layout": layout, "tokens": tokens, "dense_ms": td, "sparse_ms": ts,
                         "speedup": td / ts, "layers_converted": len(conv["converted"]),
                         "max_rel_error_vs_masked_dense": err})
            print(json.dumps(rows[-1]))
    res = {"device": torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or platform.machine()}), "
           f"{a.threads} thread(s)", "dtype": str(dtype), "torch": torch.__version__, "repeats": a.repeats,
           "rows": rows, "command": f"python benchmarks/nm_speed.py --device {a.device} --threads {a.threads} "
                                    f"--repeats {a.repeats}"}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
