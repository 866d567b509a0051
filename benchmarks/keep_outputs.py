"""Parameters removed at sparsity 0.5 with every output kept vs only the outputs a user reads (``keep_outputs=``).

The models are the small BertModel and CLIPModel of tests/test_keep_outputs.py (built from configs, random
weights). Run: ``python benchmarks/keep_outputs.py``.
"""
import sys
import warnings
from pathlib import Path

import torch

import prunekit as pk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_keep_outputs import _bert, _clip  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    print("| model | keep_outputs | parameters removed | outputs changed |")
    print("|---|---|---|---|")
    for build, keep in ((_bert, ["pooler_output"]), (_clip, ["text_embeds", "image_embeds"])):
        for k in ("all", keep):
            model, x = build()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = pk.prune_(model, example_inputs=x, sparsity=0.5, keep_outputs=k)
            changed = ", ".join(f"{o['output']}" for o in r.outputs_changed) or "-"
            print(f"| {type(model).__name__} | {k} | {r.sparsity:.1%} | {changed} |")


if __name__ == "__main__":
    main()
