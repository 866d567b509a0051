"""AMC's small-scale check (its entry, scaled to this machine): the DDPG search against uniform widths and a
random search with the same number of evaluations.

Protocol: the shipped ResNet-20 baseline on Fashion-MNIST, ``--train`` training images (the fine-tune) and
``--val`` held out of the training images (the reward); the FLOPs budget ``--target``. Three policies, each
scored by the search block's evaluator (``--recal`` training batches re-estimate BatchNorm, then accuracy on
the held-out images): (i) uniform: ``pk.plan``'s uniform L1 allocation at the target; (ii) random: the search
block's random strategies (EagleEye's sampler, ``pk.search``) with ``--episodes`` evaluations; (iii) AMC:
``--episodes`` episodes (``--warmup`` of them random), the paper's agent otherwise at its defaults, channels
rounded to ``--round-to``. Asserts of the entry: (a) every policy AMC played has MACs <= target + 1%; (c) after
an identical ``--epochs``-epoch fine-tune (SGD lr ``--lr``, cosine, batch 128) the AMC policy's test accuracy
is at least the uniform policy's - 0.3 pp. ((b), least-squares reconstruction, is left out: AMC here scores
by adaptive BN.) One JSON line per finished stage in ``--out`` (resumable: finished stages are not run
again), a Markdown summary beside it.

Usage: nice python benchmarks/amc_check.py [--episodes 60 --warmup 20]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import prunekit as pk
from prunekit.allocate import parse_target
from prunekit.api import Subnets
from prunekit.data import first_examples
from prunekit.methods.amc import AMCConfig, amc_search
from prunekit.train.baseline import load_baseline
from prunekit.train.subnet_eval import SubnetEvaluator, recalibrate_bn

COMMAND = "nice python benchmarks/amc_check.py"


def _fine_tuned(subnets, widths, train, test, recal, a) -> float:
    m = subnets.pruned_copy(widths)
    recalibrate_bn(m, recal)
    pk.fit(m, train, pk.TrainConfig(epochs=a.epochs, lr=a.lr, seed=a.seed, progress=False))
    return pk.evaluate(m, test)["accuracy"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--target", default="macs=0.5")
    ap.add_argument("--round-to", type=int, default=8)
    ap.add_argument("--recal", type=int, default=10)
    ap.add_argument("--val", type=int, default=2000)
    ap.add_argument("--train", type=int, default=10000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/amc_check.jsonl")
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    data = pk.data.load("fashion-mnist", batch_size=128, subset=a.train + a.val, seed=a.seed,
                        val_fraction=a.val / (a.train + a.val))
    train, val = first_examples(data.train, a.train), first_examples(data.val, a.val)
    test = first_examples(data.test, a.test)
    recal = train[:a.recal]
    model = load_baseline("resnet20")
    x = data.example_inputs(2)
    subnets = Subnets(model, x, round_to=a.round_to)
    unit = Subnets(model, x)  # channel units of 1: pk.plan's uniform allocation
    kind, limit = parse_target(a.target)
    evaluator = SubnetEvaluator(recal, val)

    def score(widths, space=None) -> float:
        with (space or subnets).masked(widths) as v:
            return evaluator(v)

    out = Path(a.out)
    rows = {json.loads(l)["policy"]: json.loads(l) for l in out.read_text().splitlines()} if out.exists() else {}
    out.parent.mkdir(parents=True, exist_ok=True)

    def stage(name, fn):
        if name in rows:
            return rows[name]
        t0 = time.perf_counter()
        row = {"policy": name, **fn(), "seconds": time.perf_counter() - t0}
        row["finetuned"] = _fine_tuned(unit if name == "uniform" else subnets, tuple(row["widths"]), train, test,
                                       recal, a) if a.epochs else None  # --epochs 0: no fine-tune
        rows[name] = row
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps({k: v for k, v in row.items() if k not in ("scores", "costs")}), flush=True)
        return row

    def uniform():
        w = unit.uniform_at(a.target)
        return {"widths": list(w), "cost": unit.cost(w, kind), "score": score(w, unit), "evaluations": 1}

    def random():
        r = pk.search(model, x, a.target, train=train, val=val, candidates=a.episodes, recal_batches=a.recal,
                      round_to=a.round_to, window=0.02, seed=a.seed)
        tr = r.record.trials
        return {"widths": list(r.best.widths), "cost": r.best.cost, "score": r.best.score, "evaluations": len(tr),
                "scores": [t.score for t in tr], "costs": [t.cost for t in tr]}

    def amc():
        cfg = AMCConfig(episodes=a.episodes, warmup=a.warmup, round_to=a.round_to)
        rec, agent = amc_search(subnets, lambda w: subnets.cost(w, kind), limit, score, cfg, seed=a.seed)
        tr = rec.trials
        best = max(tr, key=lambda t: (t.info["reward"], -t.index))
        return {"widths": list(best.widths), "cost": best.cost, "score": best.score, "evaluations": len(tr),
                "scores": [t.score for t in tr], "costs": [t.cost for t in tr], "updates": agent["updates"],
                "final_noise": agent["final_noise"], "warmup_mean": float(np.mean([t.score for t in tr[:a.warmup]])),
                "agent_mean": float(np.mean([t.score for t in tr[a.warmup:]])) if len(tr) > a.warmup else None,
                "max_cost": max(t.cost for t in tr)}

    stage("uniform", uniform)
    stage("random", random)
    stage("amc", amc)
    summarise(rows, a, limit)


def summarise(rows: dict, a, limit: float) -> None:
    u, r, m = rows["uniform"], rows["random"], rows["amc"]
    ok_a = m["max_cost"] <= limit + 0.01
    ok_c = None if m["finetuned"] is None else m["finetuned"] >= u["finetuned"] - 0.003
    pct = lambda v: "not run" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    md = [f"# AMC's entry check (scaled): ResNet-20 / Fashion-MNIST at {a.target}", "",
          f"Command: `{COMMAND} --episodes {a.episodes} --warmup {a.warmup} --target {a.target} --val {a.val} "
          f"--epochs {a.epochs}` (resumable; "
          f"`{Path(a.out).name}`). Policies scored by adaptive BN ({a.recal} training batches) + accuracy on "
          f"{a.val} held-out training images; fine-tune {a.epochs} epoch(s) on {a.train} training images (SGD lr "
          f"{a.lr}, cosine), test accuracy on {a.test} test images; channels in units of {a.round_to} for AMC and "
          f"the random search, 1 for uniform.", "",
          "| policy | evaluations | kept MACs | adaptive-BN score | fine-tuned test acc. |", "|---|---|---|---|---|"]
    for row in (u, r, m):
        md.append(f"| {row['policy']} | {row['evaluations']} | {row['cost']:.4f} | {100 * row['score']:.2f}% | "
                  f"{pct(row['finetuned'])} |")
    md += ["", f"AMC: {m['updates']} agent updates, final noise {m['final_noise']:.3f}; mean score of the "
           f"{a.warmup} random warm-up episodes {100 * m['warmup_mean']:.2f}%, of the agent's episodes "
           f"{100 * (m['agent_mean'] or float('nan')):.2f}%; largest kept MACs of any episode {m['max_cost']:.4f}.",
           "", f"(a) every AMC policy within the budget + 1%: {'holds' if ok_a else 'FAILS'}; "
           f"(c) AMC fine-tuned >= uniform - 0.3 pp: "
           f"{'not run (--epochs 0)' if ok_c is None else 'holds' if ok_c else 'does not hold'} "
           f"({pct(m['finetuned'])} vs {pct(u['finetuned'])})."]
    Path(a.out).with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
