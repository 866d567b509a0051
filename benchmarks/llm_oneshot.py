"""One-shot pruning of a language model: test perplexity of dense, magnitude-llm, wanda and sparsegpt.

For a baseline language model (a baseline name, a saved model file or a model spec such as ``gpt-tiny``, which
is then randomly initialised: only for trying the script) and a token data set, every method runs at
sparsity 0.5 / 0.6 / 0.7 and at 2:4 and 4:8, with ``--calib N`` calibration batches drawn with each of
``--seeds`` (one calibration draw per seed; magnitude needs none and runs once). Each cell is one JSON file
under ``benchmarks/results/llm_oneshot/<tag>/`` (a rerun skips the finished cells: resumable); the markdown
table ``<tag>.md`` gives the test perplexity exp(mean next-token cross-entropy) as mean ± std over the seeds.
``recon.json`` holds the per-layer relative reconstruction error ||WX - W'X||^2 / ||WX||^2 of the three
methods on the same inputs: the dense model's first decoder block on the calibration batches of seed 0.

Layers whose inputs are not divisible by M are left dense in the N:M cells (listed as ``ignored``).

Usage (one thread; the real runs are the lead's):
    nice python benchmarks/llm_oneshot.py --baseline gpt-tiny-text --data text:python-docs --seeds 0 1 2 --calib 16
    nice python benchmarks/llm_oneshot.py --baseline gpt-tiny --data synthetic-text --seq-len 32 --calib 2 --quick
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import statistics
import time
from pathlib import Path

import torch

import prunekit as pk
from prunekit import workflows as W
from prunekit.criteria.collect import collect
from prunekit.criteria.sequential import block_linears, decoder_blocks
from prunekit.masks import get_pattern
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods.sparsegpt import reconstruction_errors

RESULTS = Path(__file__).parent / "results" / "llm_oneshot"
METHODS = ("magnitude-llm", "wanda", "sparsegpt")
SETTINGS = ("0.5", "0.6", "0.7", "2:4", "4:8")


def _target(setting: str) -> tuple[str, dict]:
    if ":" in setting:
        n, m = (int(v) for v in setting.split(":"))
        return f"sparsity={1 - n / m:g}", {"pattern": setting}
    return f"sparsity={setting}", {}


def _indivisible(model, setting: str) -> list[str]:
    if ":" not in setting:
        return []
    m = int(setting.split(":")[1])
    path, blocks = decoder_blocks(model)
    return [f for i, b in enumerate(blocks) for f, mod in block_linears(b, f"{path}.{i}").items() if mod.in_features % m]


def perplexity(model, test) -> float:
    return math.exp(pk.evaluate(model, test)["loss"])


def _load(args):
    opts = dict(kv.split("=", 1) for kv in args.data_option)
    opts = {k: (int(v) if re.fullmatch(r"-?\d+", v) else v) for k, v in opts.items()}
    if args.seq_len:
        opts["seq_len"] = args.seq_len
    bundle = pk.data.load(args.data, batch_size=args.batch_size, val_fraction=0.0, **opts)
    return bundle


def _model(args, bundle):
    torch.manual_seed(0)
    model = W.resolve_model(args.baseline, num_classes=bundle.num_classes, in_channels=1, input_size=bundle.input_size)
    if args.train_epochs:  # a model spec trained here for a smoke run, once, cached beside the cells
        cached = args.out / "dense_state.pt"
        if not cached.exists():
            pk.fit(model, bundle.train, pk.TrainConfig(epochs=args.train_epochs, lr=args.lr, optimizer="adamw",
                                                       seed=0, progress=False))
            torch.save(model.state_dict(), cached)
        model.load_state_dict(torch.load(cached))
    return model.eval()


def _calib(bundle, n: int, batch: int, seed: int):
    return dataclasses.replace(bundle, seed=seed).calib(n, batch)


def run_cell(args, bundle, method: str, setting: str, seed: int) -> dict:
    model = _model(args, bundle)
    target, options = _target(setting)
    ignore = _indivisible(model, setting)
    calib = _calib(bundle, args.calib, args.calib_batch_size, seed)
    load_all()
    t0 = time.perf_counter()
    res = get_method(method).run(RunContext(model=model, example_inputs=calib[0][0][:1], target=target, calib=calib,
                                            ignore=tuple(ignore), options=options, seed=seed))
    seconds = time.perf_counter() - t0
    tel = {k: v for k, v in res.telemetry.items() if not isinstance(v, dict)}
    return {"method": method, "setting": setting, "seed": seed, "ppl": perplexity(model, bundle.test),
            "seconds": seconds, "telemetry": tel, "layer_sparsity": res.telemetry.get("layer_sparsity"),
            "layer_rel_error": res.telemetry.get("layer_rel_error"), "ignored": ignore, "engaged": res.engaged}


def recon_errors(args, bundle) -> dict:
    """Per-layer relative reconstruction errors of the three methods on the dense first block's inputs."""
    model = _model(args, bundle)
    path, blocks = decoder_blocks(model)
    layers = block_linears(blocks[0], f"{path}.0")
    cal = collect(model, _calib(bundle, args.calib, args.calib_batch_size, 0), inputs=list(layers))
    out = {}
    for setting in SETTINGS:
        target, options = _target(setting)
        sparsity = float(target.split("=")[1])
        pattern = get_pattern(options["pattern"]) if options else None
        out[setting] = {}
        for f, mod in layers.items():
            if pattern is not None and mod.in_features % pattern.m:
                continue
            x = torch.cat([t.reshape(-1, t.shape[-1]) for t in cal.inputs[f]])
            out[setting][f] = {k: round(v, 6) for k, v in reconstruction_errors(mod.weight, x, sparsity, pattern).items()}
    return out


def table(cells: list[dict], dense: float, args) -> str:
    lines = [f"# One-shot pruning of `{args.baseline}` on `{args.data}`: test perplexity", "",
             f"Calibration: {args.calib} batches x {args.calib_batch_size} sequences per seed, seeds "
             f"{' '.join(map(str, args.seeds))} (mean ± std over the seeds; magnitude needs no calibration). "
             f"Dense: {dense:.4g}. Embeddings and LM head dense.", "",
             "| method | " + " | ".join(SETTINGS) + " |", "|---" * (len(SETTINGS) + 1) + "|"]
    for method in METHODS:
        row = [method]
        for s in SETTINGS:
            vals = [c["ppl"] for c in cells if c["method"] == method and c["setting"] == s]
            if not vals:
                row.append("–")
            elif len(vals) == 1:
                row.append(f"{vals[0]:.4g}")
            else:
                row.append(f"{statistics.mean(vals):.4g} ± {statistics.stdev(vals):.2g}")
        lines.append("| " + " | ".join(row) + " |")
    ignored = sorted({f for c in cells for f in c.get("ignored", [])})
    if ignored:
        lines += ["", f"Left dense in the N:M cells (inputs not divisible by M): {', '.join(ignored)}."]
    lines += ["", "Command: `" + args.command + "`"]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", required=True, help="baseline name, model file or model spec (gpt-tiny: random)")
    ap.add_argument("--data", default="text:python-docs")
    ap.add_argument("--data-option", action="append", default=[], help="KEY=VALUE passed to pk.data.load")
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--calib", type=int, default=16, help="calibration batches per seed")
    ap.add_argument("--calib-batch-size", type=int, default=8)
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS))
    ap.add_argument("--tag", default=None, help="results folder name (default: from baseline and data)")
    ap.add_argument("--train-epochs", type=int, default=0, help="train a model spec first (smoke runs only)")
    ap.add_argument("--lr", type=float, default=3e-3, help="learning rate of --train-epochs (AdamW)")
    ap.add_argument("--quick", action="store_true", help="seed 0 only, settings 0.5 and 2:4 (a smoke run)")
    args = ap.parse_args(argv)
    args.command = "python benchmarks/llm_oneshot.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    if args.quick:
        args.seeds, args.settings = args.seeds[:1], ["0.5", "2:4"]
    torch.set_num_threads(1)
    tag = args.tag or re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{Path(args.baseline).stem}__{args.data}")
    out = RESULTS / tag
    out.mkdir(parents=True, exist_ok=True)
    args.out = out
    bundle = _load(args)
    dense_file = out / "dense.json"
    if not dense_file.exists():
        dense_file.write_text(json.dumps({"ppl": perplexity(_model(args, bundle), bundle.test)}))
    dense = json.loads(dense_file.read_text())["ppl"]
    print(f"dense perplexity {dense:.3f}", flush=True)
    recon = out / "recon.json"
    if not recon.exists():
        recon.write_text(json.dumps(recon_errors(args, bundle), indent=1))
    cells = []
    for setting in args.settings:
        for method in args.methods:
            for seed in (args.seeds if method != "magnitude-llm" else args.seeds[:1]):
                f = out / f"{method}_{setting.replace(':', 'of')}_s{seed}.json"
                if not f.exists():
                    f.write_text(json.dumps(run_cell(args, bundle, method, setting, seed), indent=1))
                cell = json.loads(f.read_text())
                print(f"{method:14s} {setting:4s} seed {seed}: ppl {cell['ppl']:.3f} ({cell['seconds']:.1f}s)",
                      flush=True)
                cells.append(cell)
    (RESULTS / f"{tag}.md").write_text(table(cells, dense, args))
    print((RESULTS / f"{tag}.md").read_text())


if __name__ == "__main__":
    main()
