"""Where Deep Compression's accuracy goes at a small budget: LeNet-300-100 / Fashion-MNIST, 92% sparsity.

From the shipped dense baseline, han-magnitude (3 rounds x 1 epoch of retraining at lr 0.001 on 10,000
images, the weight grid's stage 1), then: the pruned model as it is; shared to 2^b values per layer (b = 5,
6, 8) before and after 2 epochs of centroid fine-tuning (lr 0.01, the grid's fine-tuning); and 2 epochs of
free fine-tuning without sharing. Test accuracy on the complete test set; one seed.

Usage: python benchmarks/dc_stages.py  (prints a Markdown table)
"""
from __future__ import annotations

import copy

import torch


def main():
    import prunekit as pk
    from prunekit.methods import RunContext, get_method, load_all
    from prunekit.methods.deep_compression import SharedWeights, share_weights_
    from prunekit.train.baseline import load_baseline

    torch.set_num_threads(1)
    torch.manual_seed(0)
    load_all()
    b = pk.data.load("fashion-mnist", batch_size=128, subset=(10000, None), augment=False, val_fraction=0)
    loaded = load_baseline("lenet300-fashion-mnist")
    model = loaded[0] if isinstance(loaded, tuple) else loaded
    acc = lambda m: 100 * pk.evaluate(m, b.test)["accuracy"]  # noqa: E731
    rows = [("dense baseline", acc(model), "")]
    ctx = RunContext(model=model, example_inputs=None, target="sparsity=0.92", train_data=b.train,
                     options={"rounds": 3, "retrain_epochs": 1},
                     train_config=pk.TrainConfig(epochs=1, lr=0.01, progress=False))
    get_method("han-magnitude").run(ctx)
    rows.append(("stage 1: han-magnitude to 92%", acc(model), ""))
    ft = pk.TrainConfig(epochs=2, lr=0.01, progress=False)
    for bits in (5, 6, 8):
        m = copy.deepcopy(model)
        books = share_weights_(m, bits_fc=bits, bits_conv=8)
        shared = acc(m)
        pk.fit(m, b.train, ft, callbacks=[SharedWeights(books, max_step=0.05)])
        rows.append((f"stage 2: {bits}-bit sharing", shared, f"{acc(m):.2f}"))
    m = copy.deepcopy(model)
    pk.fit(m, b.train, ft)
    rows.append(("no sharing, free fine-tuning", acc(model), f"{acc(m):.2f}"))
    print("| model | accuracy (%) | after 2 epochs of fine-tuning (%) |\n|---|---:|---:|")
    for name, a, after in rows:
        print(f"| {name} | {a:.2f} | {after or '—'} |")


if __name__ == "__main__":
    main()
