"""The scaled small-scale checks of the weight-pruning part 2 methods, with every number printed.

Each check repeats the protocol of the matching slow test in tests/methods/test_<module>.py (LeNet-300-100,
a fixed 6,000-image Fashion-MNIST training subset and 2,000 test images, one thread) and prints the
accuracies and counts the test's thresholds were calibrated on. Results go to <out> as JSON, one key per
check; finished checks are skipped on the next run (resumable).

Usage: nice python benchmarks/weight2_checks.py [--out runs/weight2_checks.json] [--only lap dpf ...]
"""
from __future__ import annotations

import argparse
import json
import os
from functools import partial

import torch

import prunekit as pk
from prunekit.methods import RunContext, get_method, load_all


def _data(batch_size=128):
    return pk.data.load("fashion-mnist", batch_size=batch_size, subset=(6000, 2000), val_fraction=0.0,
                        augment=False)


def _acc(m, b):
    return pk.evaluate(m, b.test)["accuracy"]


def check_lap():
    from prunekit.schedules.functions import geometric_rounds

    b = _data()
    acc = {"lap": [], "magnitude": []}
    for seed in range(3):
        torch.manual_seed(seed)
        dense = pk.models.create("lenet300")
        pk.fit(dense, b.train, pk.TrainConfig(epochs=2, lr=0.05, seed=seed, progress=False))
        for crit in acc:
            m = pk.models.create("lenet300")
            m.load_state_dict(dense.state_dict())
            for s in geometric_rounds(0.96875, rounds=5):
                pk.sparsify_(m, sparsity=s, criterion=crit, calib=b.calib(1))
                pk.fit(m, b.train, pk.TrainConfig(epochs=1, lr=0.05, seed=seed, progress=False))
            acc[crit].append(_acc(m, b))
    return acc


def check_dpf():
    from prunekit.schedules import GradualPruning, agp_cubic

    b = _data()
    n = (3 * len(b.train)) // 16
    out = {"dpf": [], "gmp": [], "revived_after_ramp": []}
    for seed in range(3):
        cfg = pk.TrainConfig(epochs=5, lr=0.05, seed=seed, progress=False)
        torch.manual_seed(seed)
        m = pk.models.create("lenet300")
        res = get_method("dpf").run(RunContext(model=m, example_inputs=None, target="sparsity=0.95",
                                               train_data=b.train, train_config=cfg, prune_epochs=5, seed=seed))
        out["dpf"].append(_acc(m, b))
        out["revived_after_ramp"].append(res.info["revived_after_ramp"])
        torch.manual_seed(seed)
        g = pk.models.create("lenet300")
        pk.fit(g, b.train, cfg, callbacks=[GradualPruning(partial(agp_cubic, final=0.95, start=0, n=n, frequency=16),
                                                          global_=True)])
        out["gmp"].append(_acc(g, b))
    torch.manual_seed(0)
    d = pk.models.create("lenet300")
    pk.fit(d, b.train, pk.TrainConfig(epochs=5, lr=0.05, seed=0, progress=False))
    pk.sparsify_(d, sparsity=0.95, global_=True)
    out["one_shot_no_retrain"] = _acc(d, b)
    return out


def check_gsm():
    from prunekit.methods.gsm import GSM

    b = _data(64)
    cfg = pk.TrainConfig(epochs=8, lr=0.01, momentum=0.99, weight_decay=2e-2, seed=0, progress=False)
    torch.manual_seed(0)
    dense = pk.models.create("lenet300")
    init = {k: v.clone() for k, v in dense.state_dict().items()}
    pk.fit(dense, b.train, cfg.replace(weight_decay=5e-4))
    out = {"dense": _acc(dense, b)}
    pk.sparsify_(dense, sparsity=0.9, global_=True)
    out["one_shot_no_retrain"] = _acc(dense, b)
    m = pk.models.create("lenet300")
    m.load_state_dict(init)
    cb = GSM(0.9, harden_at_end=False)
    pk.fit(m, b.train, cfg, callbacks=[cb])
    out["gsm_before_cut"] = _acc(m, b)
    numel = sum(p.numel() for p in cb.params.values())
    out["below_1e-3"] = sum(int((p.abs() < 1e-3).sum()) for p in cb.params.values()) / numel
    out["below_1e-2"] = sum(int((p.abs() < 1e-2).sum()) for p in cb.params.values()) / numel
    pk.masks.install_masks_(m, cb.final_masks())
    out["gsm_after_cut"] = _acc(m, b)
    return out


def check_proxsgd():
    from prunekit.methods.proxsgd import UseProxSGD

    b = _data()
    cfg = pk.TrainConfig(epochs=3, optimizer="adam", lr=1e-3, weight_decay=0.0, seed=0, progress=False)
    out = {}
    for mu in (1e-4, 5e-5):
        class L1(pk.Callback):
            def on_before_backward(self, state, mu=mu):
                state.loss = state.loss + mu * sum(p.abs().sum() for n, p in state.model.named_parameters()
                                                   if n.endswith("weight"))

        runs = (("prox", [UseProxSGD(mu=mu)]), ("adam_l1", [L1()])) + ((("adam", []),) if mu == 1e-4 else ())
        for name, cbs in runs:
            torch.manual_seed(0)
            m = pk.models.create("lenet300")
            pk.fit(m, b.train, cfg, callbacks=cbs)
            ws = [p for n, p in m.named_parameters() if n.endswith("weight")]
            key = name if name == "adam" else f"{name}_mu{mu:g}"
            out[key] = {"accuracy": _acc(m, b),
                        "exact_zeros": sum(int((p == 0).sum()) for p in ws) / sum(p.numel() for p in ws)}
    return out


def check_str():
    from prunekit.methods.agp import agp_callback

    b = _data()
    cfg = pk.TrainConfig(epochs=5, lr=0.05, seed=0, progress=False)
    torch.manual_seed(0)
    m = pk.models.create("lenet300")
    res = get_method("str").run(RunContext(model=m, example_inputs=None, target="sparsity=0.9", train_data=b.train,
                                           train_config=cfg, prune_epochs=5))
    out = {"str": _acc(m, b), "learned_sparsity": res.info["learned_sparsity"],
           "learned_per_layer": res.info["learned_per_layer"]}
    torch.manual_seed(0)
    g = pk.models.create("lenet300")
    pk.fit(g, b.train, cfg, callbacks=[agp_callback(final=res.info["sparsity"], total_steps=5 * len(b.train),
                                                    frequency=16)])
    out["agp"] = _acc(g, b)
    return out


def check_l_obs():
    b = _data()
    cfg = pk.TrainConfig(epochs=3, lr=0.05, seed=0, progress=False)
    torch.manual_seed(0)
    dense = pk.models.create("lenet300")
    pk.fit(dense, b.train, cfg)
    out = {"dense": _acc(dense, b)}
    mag = pk.models.create("lenet300")
    mag.load_state_dict(dense.state_dict())
    pk.sparsify_(mag, sparsity=0.9)
    out["magnitude"] = _acc(mag, b)
    get_method("l-obs").run(RunContext(model=dense, example_inputs=None, target="sparsity=0.9", calib=b.calib(16)))
    out["l_obs"] = _acc(dense, b)
    pk.fit(dense, b.train, cfg.replace(epochs=1, lr=0.05))
    out["l_obs_retrained_1_epoch"] = _acc(dense, b)
    return out


def check_darb():
    from prunekit.masks import install_masks_
    from prunekit.methods.darb import darb_mask

    b = _data()
    cfg = pk.TrainConfig(epochs=3, lr=0.05, seed=0, progress=False)
    torch.manual_seed(0)
    dense = pk.models.create("lenet300")
    pk.fit(dense, b.train, cfg)
    out = {}
    for name in ("bmwm", "darb", "irregular"):
        m = pk.models.create("lenet300")
        m.load_state_dict(dense.state_dict())
        if name == "bmwm":
            rep = pk.sparsify_(m, pattern="bmwm:8")
            per_layer = {k: v["sparsity"] for k, v in rep.layers.items()}
        elif name == "darb":
            install_masks_(m, {k: darb_mask(m.get_parameter(k), s) for k, s in per_layer.items()})
        else:
            pk.sparsify_(m, sparsity=0.875, overrides={k.rpartition(".")[0]: s for k, s in per_layer.items()})
        before = _acc(m, b)
        pk.fit(m, b.train, cfg.replace(epochs=2))
        out[name] = {"before_retraining": before, "after_2_epochs": _acc(m, b)}
    return out


def check_deconstruct_lt():
    b = _data()
    cfg = pk.TrainConfig(epochs=2, lr=0.05, seed=0, progress=False)
    spec = get_method("deconstruct-lt")
    out = {}
    for crit in ("large_final", "magnitude_increase", "movement", "random"):
        torch.manual_seed(0)
        m = pk.models.create("lenet300")
        spec.run(RunContext(model=m, example_inputs=None, target="sparsity=0.95", train_data=b.train,
                            train_config=cfg, prune_epochs=2, options={"criterion": crit}))
        pk.fit(m, b.train, cfg)
        out[f"ticket_{crit}"] = _acc(m, b)
    for s in (0.8, 0.9):
        torch.manual_seed(0)
        m = pk.models.create("lenet300")
        spec.run(RunContext(model=m, example_inputs=None, target=f"sparsity={s}", train_data=b.train,
                            train_config=cfg, prune_epochs=2, options={"variant": "supermask"}))
        out[f"supermask_untrained_{s}"] = _acc(m, b)
    torch.manual_seed(0)
    m = pk.models.create("lenet300")
    spec.run(RunContext(model=m, example_inputs=None, target="sparsity=0.5", train_data=b.train, train_config=cfg,
                        prune_epochs=2, options={"variant": "learned_supermask"}))
    out["learned_supermask_0.5"] = _acc(m, b)
    return out


CHECKS = {"lap": check_lap, "dpf": check_dpf, "gsm": check_gsm, "proxsgd": check_proxsgd, "str": check_str,
          "l-obs": check_l_obs, "darb": check_darb, "deconstruct-lt": check_deconstruct_lt}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/weight2_checks.json")
    ap.add_argument("--only", nargs="+", default=list(CHECKS), choices=list(CHECKS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    load_all()
    done = json.load(open(args.out)) if os.path.exists(args.out) else {}
    for name in args.only:
        if name in done:
            continue
        done[name] = CHECKS[name]()
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(done, f, indent=1)
        print(name, json.dumps(done[name]), flush=True)


if __name__ == "__main__":
    main()
