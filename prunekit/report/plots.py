"""PNG plots (matplotlib, Agg backend): Pareto front, layer widths, sparsity, training and sensitivity curves."""
from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
                         "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 110})
    return plt


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def pareto_front(points: list[dict]) -> list[dict]:
    """The points no other point beats on both fewer MACs and higher accuracy, by increasing MACs.

    Example:
        >>> pts = [{"macs": 1, "accuracy": 0.5}, {"macs": 2, "accuracy": 0.4}, {"macs": 3, "accuracy": 0.9}]
        >>> [p["macs"] for p in pareto_front(pts)]
        [1, 3]
    """
    front, best = [], float("-inf")
    for p in sorted(points, key=lambda p: (p["macs"], -p["accuracy"])):
        if p["accuracy"] > best:
            front.append(p)
            best = p["accuracy"]
    return front


def plot_pareto(points: list[dict], path, title: str = "Accuracy vs MACs") -> Path:
    """Scatter ``{label, macs, accuracy[, accuracy_std]}`` points, one colour per label, with the front."""
    plt = _plt()
    labels = list(dict.fromkeys(p["label"] for p in points))
    outside = len(labels) > 6  # a long legend goes beside the axes, never over the points or the title
    fig, ax = plt.subplots(figsize=(9.6 if outside else 6.4, max(4.4, 0.24 * len(labels) + 1.0) if outside else 4.4))
    markers = "osD^v<>phX*"
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    for i, label in enumerate(labels):
        pts = sorted((p for p in points if p["label"] == label), key=lambda p: p["macs"])
        xs = [p["macs"] / 1e6 for p in pts]
        ys = [100 * p["accuracy"] for p in pts]
        err = [100 * p.get("accuracy_std", 0.0) for p in pts]
        ax.errorbar(xs, ys, yerr=err if any(err) else None, fmt=markers[i % len(markers)], color=cmap(i),
                    label=label, capsize=3, markersize=6, linestyle="-" if len(pts) > 1 else "none",
                    linewidth=0.8, alpha=0.9)
    if len(points) <= 4:  # few points: write each one's accuracy beside it
        for p in points:
            ax.annotate(f"{100 * p['accuracy']:.1f}%", (p["macs"] / 1e6, 100 * p["accuracy"]),
                        textcoords="offset points", xytext=(6, 6), fontsize=8)
    front = pareto_front(points)
    if len(front) > 1 and len(points) > 2:
        ax.step([p["macs"] / 1e6 for p in front], [100 * p["accuracy"] for p in front], where="post",
                color="0.4", linestyle="--", linewidth=1, label="Pareto front", zorder=0)
    ax.set_xlabel("MACs (millions, lower is cheaper)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    if outside:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, borderaxespad=0)
    else:
        ax.legend(fontsize=8, loc="best", frameon=True, framealpha=0.85)
    ax.margins(x=0.1, y=0.15)
    return _save(fig, path)


def _short(fqn: str, limit: int = 22) -> str:
    return fqn if len(fqn) <= limit else "…" + fqn[-(limit - 1):]


def plot_widths(per_layer: dict, path) -> Path:
    """Bars of each layer's output width before (light) and after (dark) pruning."""
    plt = _plt()
    names = list(per_layer)
    before = [per_layer[n].get("width_before", 0) for n in names]
    after = [per_layer[n].get("width_after", 0) for n in names]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * len(names) + 2), 4.2))
    xs = range(len(names))
    ax.bar(xs, before, color="#c6dbef", label="before", width=0.8)
    ax.bar(xs, after, color="#2171b5", label="after", width=0.55)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([_short(n) for n in names], rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("output channels / features")
    ax.set_title("Layer widths before and after pruning")
    ax.legend(frameon=False)
    ax.grid(axis="x", visible=False)
    return _save(fig, path)


def plot_sparsity(per_layer: dict, path) -> Path:
    """Horizontal bars of the fraction of zero weights in each layer after pruning."""
    plt = _plt()
    names = list(per_layer)
    values = [100 * per_layer[n].get("sparsity", 0.0) for n in names]
    fig, ax = plt.subplots(figsize=(6.4, max(2.5, 0.22 * len(names) + 1.2)))
    ys = list(range(len(names)))[::-1]
    ax.barh(ys, values, color="#e6550d", height=0.7)
    ax.set_yticks(ys)
    ax.set_yticklabels([_short(n, 30) for n in names], fontsize=7)
    ax.set_xlim(0, 100)
    ax.set_xlabel("zero weights (%)")
    ax.set_title("Per-layer weight sparsity after pruning")
    ax.grid(axis="y", visible=False)
    return _save(fig, path)


def plot_training(history: list[dict], path) -> Path:
    """Loss and accuracy per epoch (``{epoch, loss, accuracy?, val_accuracy?}`` rows)."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8.0, 3.2))
    epochs = [h.get("epoch", i) + (1 if "epoch" in h and min(x.get("epoch", 0) for x in history) == 0 else 0)
              for i, h in enumerate(history)]
    for key, ax, scale, label in (("loss", ax1, 1, "train loss"), ("val_loss", ax1, 1, "val loss"),
                                  ("accuracy", ax2, 100, "train accuracy"), ("val_accuracy", ax2, 100,
                                                                             "val accuracy")):
        pts = [(e, scale * h[key]) for e, h in zip(epochs, history) if h.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
    ax1.set_title("loss")
    ax2.set_title("accuracy (%)")
    for ax in (ax1, ax2):
        ax.set_xlabel("fine-tune epoch")
        if ax.lines:
            ax.legend(frameon=False, fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _save(fig, path)


def plot_sensitivity(sensitivity: dict, path) -> Path:
    """Accuracy vs sparsity, one line per layer (``{fqn: [[sparsity, accuracy], ...]}``)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    cmap = plt.get_cmap("viridis")
    n = max(1, len(sensitivity) - 1)
    for i, (fqn, curve) in enumerate(sensitivity.items()):
        xs, ys = zip(*sorted(curve))
        ax.plot([100 * x for x in xs], [100 * y for y in ys], marker=".", color=cmap(0.85 * i / n), label=_short(fqn, 26))
    ax.set_xlabel("channels removed in this layer alone (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Layer sensitivity")
    if len(sensitivity) <= 24:
        ax.legend(fontsize=6, ncol=2, frameon=False)
    return _save(fig, path)


def plot_search(report: dict, path) -> Path:
    """A width search at a glance: left, every candidate's cost against its score (the chosen one and the
    uniform allocation marked); right, the chosen widths per layer beside the uniform ones and the dense ones."""
    plt = _plt()
    trials = report["record"]["trials"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.4), gridspec_kw={"width_ratios": [1, 1.4]})
    a.scatter([t["cost"] for t in trials], [t["score"] for t in trials], s=14, color="#9ecae1", label="candidates")
    best = report["best"]
    a.scatter([best["cost"]], [best["score"]], s=70, marker="*", color="#08519c", label="chosen", zorder=3)
    if report.get("uniform_cost") is not None:
        a.scatter([report["uniform_cost"]], [report["uniform_score"]], s=40, marker="s", color="#e6550d",
                  label="uniform", zorder=3)
    a.set_xlabel(f"kept fraction of {report['kind']}")
    a.set_ylabel("score (adaptive-BN accuracy, held-out training images)")
    a.set_title(f"{len(trials)} candidates")
    a.legend(frameon=False, fontsize=8)
    names = list(report["widths"])
    xs = range(len(names))
    dense = [report["dense_widths"][n] for n in names]
    b.bar(xs, dense, color="#deebf7", width=0.85, label="dense")
    b.bar([x - 0.2 for x in xs], [report["uniform_widths"][n] for n in names], color="#fdae6b", width=0.4,
          label="uniform")
    b.bar([x + 0.2 for x in xs], [report["widths"][n] for n in names], color="#2171b5", width=0.4, label="chosen")
    b.set_xticks(list(xs))
    b.set_xticklabels([_short(n) for n in names], rotation=70, ha="right", fontsize=7)
    b.set_ylabel("kept channels")
    b.set_title("Widths: chosen vs uniform")
    b.legend(frameon=False, fontsize=8)
    b.grid(axis="x", visible=False)
    return _save(fig, path)
