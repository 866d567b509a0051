"""Perplexity against MACs for calibrated structural pruning of a language model (issue 23, item 3).

For one baseline, every cell prunes a fresh copy one-shot (no recovery) and measures perplexity on the test
split (exp of the mean next-token cross-entropy) and the MACs/parameters kept (counted on the pruned model):

- ``heads``: llm-width with units=heads (whole key-value groups under GQA);
- ``ffn``: llm-width with units=ffn;
- ``both``: llm-width with units=both (one fraction for heads and neurons, as LLM-Pruner);
- ``layers``: llm-depth (ShortGPT's Block Influence, whole decoder layers),

at 10..50% of the decoder layers' MACs removed (target ``macs=1-f*share``, ``share`` = the decoder layers' part
of the model's MACs; ``--of model``: of the whole model's MACs, target ``macs=1-f``); a target one kind of unit
cannot reach is recorded as such. One JSON per cell under ``--out`` (finished cells are skipped on the next run: resumable), then a
markdown table (``table.md``) and a plot of perplexity against MACs kept, one line per unit (``plot.png``).

Usage (the lead's runs on the trained baselines; a random model to test the script):
    nice python benchmarks/llm_structural.py --baseline llama-tiny-text --data text:python-docs
    nice python benchmarks/llm_structural.py --baseline gpt-tiny --data synthetic-text --data-option vocab_size=64 \
        --data-option n_train=256 --data-option n_test=64 --seq-len 32 --calib-batches 2 \
        --out benchmarks/results/llm_structural/random-gpt-tiny
"""
from __future__ import annotations

import argparse
import copy
import json
import time
import warnings
from pathlib import Path

import torch

import prunekit as pk
from prunekit import workflows as W
from prunekit.errors import ConfigError, MechanismWarning
from prunekit.methods import RunContext, get_method, load_all
from prunekit.methods.llm_depth import layer_costs

UNITS = ("heads", "ffn", "both", "layers")


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _batches(loader, n: int | None) -> list:
    out = []
    for b in loader:
        if n is not None and len(out) >= n:
            break
        out.append(b)
    return out


def perplexity(model, batches) -> float:
    return pk.measure.perplexity(model, batches)["perplexity"]


def cell(model, unit: str, frac: float, calib, test, criterion: str, seed: int, share: float = 1.0) -> dict:
    """Prune a copy of ``model`` with ``unit`` to remove ``frac`` of the MACs of its decoder layers (``share``:
    their fraction of the model's MACs; 1.0 = of the whole model); perplexity and costs."""
    m = copy.deepcopy(model)
    x = calib[0][0][:1]
    mid = "llm-depth" if unit == "layers" else "llm-width"
    opts = {} if unit == "layers" else {"units": unit, "criterion": criterion}
    target = f"macs={1 - frac * share:.4f}"
    dense_macs, dense_params = pk.measure.count_macs(model, x).total, sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MechanismWarning)
            res = get_method(mid).run(RunContext(model=m, example_inputs=x, target=target, calib=calib, seed=seed,
                                                 options=opts))
    except ConfigError as e:
        return {"unit": unit, "frac": frac, "target": target, "error": str(e)}
    secs = time.perf_counter() - t0
    out = {"unit": unit, "frac": frac, "target": target, "method": mid, "options": opts, "seconds": secs,
           "macs_kept": pk.measure.count_macs(m, x).total / dense_macs,
           "params_kept": sum(p.numel() for p in m.parameters()) / dense_params,
           "perplexity": perplexity(m, test), "telemetry": res.telemetry, "engaged": res.engaged}
    if unit != "layers":
        out["per_layer"] = res.info["per_layer"]
    return out


def table(cells: list, dense: dict, fracs: list, of: str = "decoder") -> str:
    head = "| unit | " + " | ".join(f"{int(round(f * 100))}% of the {of} MACs removed" for f in fracs) + " |"
    lines = [f"Dense: perplexity {dense['perplexity']:.2f}.", "", "Each cell: test perplexity (MACs kept, params "
             "kept); one-shot, no recovery.", "", head, "|" + "---|" * (len(fracs) + 1)]
    by = {(c["unit"], c["frac"]): c for c in cells}
    for u in UNITS:
        row = []
        for f in fracs:
            c = by.get((u, f))
            if c is None:
                row.append("not run")
            elif "error" in c:
                row.append("unreachable")
            else:
                row.append(f"{c['perplexity']:.2f} ({c['macs_kept']:.3f}, {c['params_kept']:.3f})")
        lines.append(f"| {u} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot(cells: list, dense: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for u in UNITS:
        pts = sorted((c["macs_kept"], c["perplexity"]) for c in cells if c["unit"] == u and "error" not in c)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=u)
    ax.axhline(dense["perplexity"], color="k", ls="--", lw=1, label="dense")
    ax.set_xlabel("MACs kept (fraction of the dense model)")
    ax.set_ylabel("test perplexity")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", required=True, help="a baseline name, a model file or a model spec (gpt-tiny)")
    ap.add_argument("--data", default="text:python-docs")
    ap.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--seq-len", type=int, default=None, help="sequence length (the data set's default if unset)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--calib-batches", type=int, default=8)
    ap.add_argument("--test-batches", type=int, default=None, help="at most this many test batches (all if unset)")
    ap.add_argument("--fracs", default="0.1,0.2,0.3,0.4,0.5", help="fractions of the MACs removed")
    ap.add_argument("--units", default=",".join(UNITS))
    ap.add_argument("--criterion", default="taylor", choices=("taylor", "activation"))
    ap.add_argument("--of", default="decoder", choices=("decoder", "model"),
                    help="--fracs are fractions of the decoder layers' MACs (default; the embeddings and LM head "
                         "cannot shrink) or of the whole model's")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="folder of the cells (default benchmarks/results/llm_structural/"
                                                "<baseline name>)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    load_all()
    opts = dict(kv.split("=", 1) for kv in args.data_option)
    opts = {k: _value(v) for k, v in opts.items()}
    if args.seq_len is not None:
        opts["seq_len"] = args.seq_len
    bundle = pk.data.load(args.data, batch_size=args.batch_size, seed=args.seed, **opts)
    model = W.resolve_model(args.baseline, num_classes=bundle.num_classes, in_channels=1,
                            input_size=bundle.input_size).eval()
    calib = bundle.calib(args.calib_batches)
    test = _batches(bundle.test, args.test_batches)
    out = Path(args.out or Path(__file__).parent / "results" / "llm_structural" / Path(args.baseline).stem)
    out.mkdir(parents=True, exist_ok=True)
    fracs = [float(f) for f in args.fracs.split(",")]
    units = [u for u in args.units.split(",") if u]
    bad = [u for u in units if u not in UNITS]
    if bad:
        ap.error(f"--units: unknown {bad}; choose from {UNITS}")
    per, total = layer_costs(model, calib[0][0][:1], "macs")
    share = sum(per) / total if args.of == "decoder" else 1.0
    setting = {"baseline": args.baseline, "fracs_of": args.of, "decoder_macs_share": sum(per) / total,
               "data": args.data, "data_options": opts, "calib_batches": args.calib_batches,
               "batch_size": args.batch_size, "test_batches": len(test), "criterion": args.criterion,
               "seed": args.seed}
    dense_path = out / "dense.json"
    if dense_path.exists():
        dense = json.loads(dense_path.read_text())
    else:
        dense = {"unit": "dense", **setting, "perplexity": perplexity(model, test),
                 "params": sum(p.numel() for p in model.parameters()),
                 "macs": pk.measure.count_macs(model, calib[0][0][:1]).total}
        dense_path.write_text(json.dumps(dense, indent=1))
    print(f"dense: perplexity {dense['perplexity']:.3f}", flush=True)
    cells = []
    for u in units:
        for f in fracs:
            path = out / f"{u}_{int(round(f * 100)):02d}.json"
            if path.exists():
                cells.append(json.loads(path.read_text()))
                continue
            c = {**cell(model, u, f, calib, test, args.criterion, args.seed, share),
                 "setting": setting}
            path.write_text(json.dumps(c, indent=1, default=str))
            cells.append(c)
            msg = c.get("error", "")[:100] or (f"ppl {c['perplexity']:.3f} macs kept {c['macs_kept']:.3f} "
                                               f"params kept {c['params_kept']:.3f}")
            print(f"{u} {f:.2f}: {msg}", flush=True)
    (out / "table.md").write_text(table(cells, dense, fracs, args.of))
    plot(cells, dense, out / "plot.png")
    print(table(cells, dense, fracs, args.of))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
