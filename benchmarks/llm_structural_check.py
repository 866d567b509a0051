"""The scaled small-scale checks of llm-width and llm-depth on a gpt-tiny trained here (synthetic Markov text).

A 4-layer gpt-tiny (d_model 64) is trained for a few epochs on ``synthetic-text`` (a random Markov chain
with 3 likely successors per token, vocabulary 64: a learnable task whose best perplexity is about 3), then:

- llm-depth (ShortGPT): removing the 1 or 2 layers of lowest Block Influence against removing the layers
  of highest influence (the paper's claim: the low-influence layers are the redundant ones);
- llm-width (LLM-Pruner): the Taylor group score against the output-norm score and against removing the
  highest-Taylor units instead (a reversed ranking), one-shot at 30% and 50% of the MACs removed.

Perplexity on the test split; 3 calibration seeds for the width rows. Results go to ``--out`` (JSON, the
trained weights cached beside it: rerunning skips training and finished checks).

Usage: nice python benchmarks/llm_structural_check.py [--out benchmarks/results/llm_structural/check.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path

import torch

import prunekit as pk
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods import llm_width
from prunekit.surgery.layers import remove_layers_

VOCAB, SEQ = 64, 32


def ppl(model, test) -> float:
    return pk.measure.perplexity(model, test)["perplexity"]


def trained(out: Path, bundle):
    torch.manual_seed(0)
    model = pk.models.create("gpt-tiny", num_classes=VOCAB, in_channels=1, input_size=SEQ, n_layer=4)
    path = out.with_suffix(".model.pt")
    if path.exists():
        model.load_state_dict(torch.load(path))
        return model.eval()
    pk.fit(model, bundle.train, pk.TrainConfig(epochs=4, lr=3e-3, optimizer="adamw", weight_decay=0.0,
                                               scheduler="cosine", progress=False, seed=0))
    torch.save(model.state_dict(), path)
    return model.eval()


def depth_rows(model, calib, test) -> dict:
    bi = get_method("llm-depth")  # noqa: F841 (registered)
    from prunekit.methods.llm_depth import block_influence

    infl = block_influence(model, calib)
    order = sorted(range(len(infl)), key=lambda i: infl[i])
    rows = {"influence": infl}
    for k in (1, 2):
        for name, chosen in (("lowest_bi", order[:k]), ("highest_bi", order[-k:])):
            m = copy.deepcopy(model)
            remove_layers_(m, chosen)
            rows[f"{name}_{k}"] = {"removed": sorted(chosen), "perplexity": ppl(m, test)}
    return rows


def width_rows(model, bundle, test) -> dict:
    rows: dict = {}
    real = llm_width.taylor_scores
    for frac in (0.3, 0.5):
        for name in ("taylor", "activation", "reversed_taylor"):
            vals = []
            for seed in range(3):
                calib = bundle.calib(4, 16) if seed == 0 else _other_calib(bundle, seed)
                m = copy.deepcopy(model)
                opts = {"criterion": "activation" if name == "activation" else "taylor"}
                if name == "reversed_taylor":  # the highest-Taylor units go first
                    llm_width.taylor_scores = lambda *a: [-s for s in real(*a)]
                try:
                    get_method("llm-width").run(RunContext(model=m, example_inputs=calib[0][0][:1],
                                                           target=f"macs={1 - frac}", calib=calib, options=opts))
                finally:
                    llm_width.taylor_scores = real
                vals.append(ppl(m, test))
            rows[f"{name}_{int(frac * 100)}"] = {"perplexity": vals, "mean": statistics.mean(vals),
                                                  "std": statistics.stdev(vals)}
    return rows


def _other_calib(bundle, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for x, y in bundle.train:
        xs.append(x)
        ys.append(y)
    x, y = torch.cat(xs), torch.cat(ys)
    idx = torch.randperm(len(x), generator=g)[:64]
    return [(x[idx[i:i + 16]], y[idx[i:i + 16]]) for i in range(0, 64, 16)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "llm_structural" / "check.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    load_all()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    res = json.loads(out.read_text()) if out.exists() else {}
    bundle = pk.data.load("synthetic-text", vocab_size=VOCAB, seq_len=SEQ, n_train=2048, n_test=256, batch_size=32,
                          val_fraction=0.0)
    model = trained(out, bundle)
    test = list(bundle.test)
    if "dense" not in res:
        res["dense"] = {"perplexity": ppl(model, test)}
        out.write_text(json.dumps(res, indent=1))
    print("dense", res["dense"], flush=True)
    if "depth" not in res:
        res["depth"] = depth_rows(model, bundle.calib(4, 16), test)
        out.write_text(json.dumps(res, indent=1))
    print("depth", json.dumps(res["depth"]), flush=True)
    if "width" not in res:
        res["width"] = width_rows(model, bundle, test)
        out.write_text(json.dumps(res, indent=1))
    print("width", json.dumps(res["width"]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
