"""Train the two language-model baselines on the Python documentation corpus (``text:python-docs``).

``gpt-tiny`` (the built-in GPT: learned positions, LayerNorm, GELU MLP) and ``hf:llama-tiny`` (Hugging Face
``LlamaForCausalLM`` from a config: RoPE, RMSNorm, SwiGLU, grouped-query attention with 4 query and 2 key-value
heads), both 4 layers of width 128, about 1.8M parameters, a 4096-token byte-level BPE vocabulary and 128-token
blocks, trained with AdamW on one CPU core each. Resumable: rerun the same command after a kill (checkpoints
under ``--work``). Writes ``baselines/<name>.safetensors`` (the shipped store; its record holds the exact
``prunekit train`` command, the validation-perplexity curve per epoch, the test perplexity and the tokens
seen) and ``benchmarks/results/lm_baselines/<name>.json``.

    python benchmarks/lm_baselines.py --model gpt-tiny            # about 40 min on one core
    python benchmarks/lm_baselines.py --model hf:llama-tiny
    python benchmarks/lm_baselines.py --plot                      # the two validation curves
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from prunekit.train import baseline

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "lm_baselines"
DATA = "text:python-docs"
MODELS = {
    "gpt-tiny": dict(d_model=128, n_layer=4, n_head=4),
    "hf:llama-tiny": dict(vocab_size=4096, hidden_size=128, intermediate_size=344, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=2),
}
TRAIN = dict(epochs=6, lr=2e-3, optimizer="adamw", weight_decay=0.1, batch_size=32, warmup_steps=200,
             grad_clip_norm=1.0, seed=0)


def train(model: str, work: Path, threads: int) -> dict:
    torch.set_num_threads(threads)
    name = baseline.baseline_slug(model, DATA)
    out = ROOT / "baselines" / f"{name}.safetensors"
    t0 = time.time()
    rec = baseline.train_baseline(model, DATA, out=out, checkpoint_dir=str(work / name), progress=False,
                                  model_options=MODELS[model], force=True, **TRAIN)
    row = {"baseline": name, "model": model, "data": DATA, "params": rec["params"],
           "tokens_seen": rec["tokens_seen"], "test_perplexity": rec["test_perplexity"],
           "val_perplexity_per_epoch": [h.get("val_perplexity") for h in rec["history"]],
           "train_loss_per_epoch": [h.get("train_loss") for h in rec["history"]],
           "seconds_this_run": time.time() - t0, "threads": threads, "command": rec["command"],
           "host": "2-core CPU VM"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(row, indent=2) + "\n")
    return row


def plot() -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for f in sorted(RESULTS.glob("*.json")):
        row = json.loads(f.read_text())
        ys = row["val_perplexity_per_epoch"]
        ax.plot(range(1, len(ys) + 1), ys, marker="o", label=f"{row['model']} ({row['params'] / 1e6:.2f}M)")
    ax.set_xlabel("epoch (%d tokens each)" % (row["tokens_seen"] // len(ys)))
    ax.set_ylabel("validation perplexity")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = RESULTS / "curves.png"
    fig.savefig(out, dpi=120)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS))
    p.add_argument("--work", default=os.environ.get("TMPDIR", "/tmp") + "/prunekit-lm-baselines",
                   help="checkpoint folder (resume after a kill)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--plot", action="store_true")
    a = p.parse_args()
    if a.model:
        print(json.dumps(train(a.model, Path(a.work), a.threads), indent=2))
    if a.plot:
        print(plot())


if __name__ == "__main__":
    main()
