"""Assemble BENCHMARKS.md from the committed result files in benchmarks/results/.

Usage: python benchmarks/make_benchmarks_md.py   (rewrites BENCHMARKS.md; each section keeps its own command)
"""
from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

# (file, heading, cut the section at this heading (exclusive) or None)
SECTIONS = [
    ("fit.md", "Foundation: training loop and baselines", None),
    ("filter_fair.md", "Filter pruning on the fair protocol (equal training, Torch-Pruning at matched MACs; 3 seeds)",
     None),
    ("weight_fair.md", "Weight pruning on the fair protocol (equal training, matched sparsity)", None),
    ("weight_admm_lc.md", "Weight pruning as optimisation: ADMM and LC on the fair protocol", None),
    ("weight_admm_lc_lenet5.md", "Weight pruning as optimisation: ADMM and LC on LeNet-5 (63 cells, 3 seeds)", None),
    ("net_trim_fair.md", "Weight pruning as optimisation: Net-Trim on the fair protocol", None),
    ("sensreg_autoprune_fair.md", "Weight pruning by regularisation: sensitivity-driven decay and AutoPrune's gates", None),
    ("fddp_fair.md", "Frequency-domain dynamic pruning (FDDP) on the fair protocol", None),
    ("coreset_fair.md", "Neuron pruning: data-independent coresets on the fair protocol", None),
    ("rnn_jacobian_fair.md", "Recurrent pruning at initialisation: the RNN Jacobian criterion on the fair protocol", None),
    ("eigendamage_fair.md", "Structured pruning in the Kronecker-factored eigenbasis (EigenDamage) on the fair protocol", None),
    ("mdp_fair.md", "Multi-dimensional pruning (channels and resolution, MDP) on the fair protocol", None),
    ("constraint_aware_fair.md", "Constraint-aware compression (constrained Bayesian optimisation) on the fair protocol", None),
    ("filter_2a_fair.md", "Filter pruning by reconstruction and sampling (FSKD, PFP) on the fair protocol", None),
    ("filter_2a_ccp_aofp.md", "Filter pruning: CCP on the fair protocol (3 seeds)", None),
    ("filter_2a_aofp.md", "Filter pruning: AOFP on the fair protocol (seed 0; 30-57 CPU-minutes a cell)", None),
    ("filter_2a_hinge_curl.md", "Filter pruning: hinge and CURL on the fair protocol (3 seeds)", None),
    ("hinge_finetune_lr.md", "Filter pruning: hinge's cut model under two fine-tune learning rates", None),
    ("filter_2b_fair.md", "Filter pruning, part 2b: lfpc, scp, bar, oicsr, swp, vcp, rbp on the fair protocol (seed 0)", None),
    ("eagleeye_correlation.md", "Width search: EagleEye's claim at 4x fewer MACs (adaptive BN predicts the fine-tuned "
     "accuracy)", None),
    ("eagleeye_correlation_2x.md", "Width search: EagleEye's claim at 2x fewer MACs (the entry's target)", None),
    ("legr_check.md", "Width search: LeGR's entry check (learned layer maps vs plain global ranking)", None),
    ("oicsr_check_l0.03.md", "Filter pruning, part 2b: OICSR's entry check (out-in vs filter-only group lasso)", None),
    ("filter_11_checks.md", "Filter pruning, part 2b: scp, bar, lfpc entry checks (scaled, seed 0)", None),
    ("packnet_check.md", "PackNet: two Fashion-MNIST tasks in one network (3 seeds)", None),
    ("abcpruner_check.md", "Width search: ABCPruner's entry check (scaled; 3 seeds)", None),
    ("autocompress_check.md", "Width search: AutoCompress's entry check (scaled; 3 seeds)", None),
    ("amc_check.md", "Width search: AMC's entry check (scaled)", None),
    ("latency_search.md", "Latency targets: searched widths vs uniform on mobilenet_v2 (measured CPU latency)", None),
    ("latency_search_onnxruntime.md", "Latency targets on onnxruntime, with the measured check (row c)", None),
    ("search_fair.md", "Width search on the fair protocol: EagleEye and LeGR (with and without BN re-estimation) "
     "beside uniform, random and Torch-Pruning", None),
    ("ray_executor.md", "One benchmark grid through the local and the Ray executor", None),
    ("metapruning_check.md", "Width search, part 2: MetaPruning's entry check (scaled)", None),
    ("dmcp_check.md", "Width search, part 2: DMCP's entry check (scaled)", None),
    ("dhp_check.md", "Width search, part 2: DHP's entry check (scaled, gamma 0.05)", None),
    ("dhp_check_paper_gamma.md", "Width search, part 2: DHP at the paper's gamma (3e-4)", None),
    ("apq_check_lenet5.md", "Width search, part 2: APQ's predictor-guided search (LeNet-5)", None),
    ("apq_check_lenet5_top10.md", "Width search, part 2: APQ measuring the predictor's top 10", None),
    ("pop_check.md", "Search spaces: POP's partial-order search on the entry's grid (seed 0)", None),
    ("pop_check_seed1.md", "Search spaces: POP on the entry's grid (seed 1)", None),
    ("pop_check_dense.md", "Search spaces: POP on a denser grid", None),
    ("danas_check.md", "Search spaces: DA-NAS's curriculum check (3 seeds)", None),
    ("timm_sample.md", "Structural engine: a fixed sample of timm models, prunekit and Torch-Pruning", None),
    ("hf_sample.md", "Structural engine: every transformers architecture (fixed sample)", "## Per architecture"),
    ("hf_all.md", "Structural engine: every transformers architecture (whole sweep, partial)",
     "## Per family (config type; architectures run)"),
    ("filter_grid.md", "Filter pruning: the first side-by-side table", None),
    ("filter_methods.md", "Filter pruning: every filter method, first look", None),
    ("filter_full.md", "Filter pruning: the full table (3 seeds, 2x and 4x, every Torch-Pruning importance)", None),
    ("filter_full_costly.md", "Filter pruning: the costly methods at 2x and 4x", None),
    ("thinet_refit_scale.md", "ThiNet re-fit ablation: the paper's per-channel scaling", None),
    ("thinet_refit_full.md", "ThiNet re-fit ablation: full least squares (the default)", None),
    ("thinet_refit_none.md", "ThiNet re-fit ablation: no re-fit", None),
    ("filter_vgg.md", "Filter pruning: the small VGG", None),
    ("filter_vgg_entry_checks.md", "Filter pruning: two entries' checks with their own budgets", None),
    ("filter_vgg_entry_checks_2.md", "Filter pruning: three more entries' checks (taylor-fo, taylor-fm, gate-decorator)", None),
    ("dropnet_entry_check.md", "Filter pruning: DropNet's entry check (LeNet-300-100)", None),
    ("taylor_same_schedule.md", "Filter pruning: the Taylor methods against their own schedule with a random ranking", None),
    ("filter_gpu_full_data.md", "Filter pruning at a larger budget (every training image, GPU)", None),
    ("filter_full_data_cpu.md", "Filter pruning at the larger budget: csgd and gdp rerun on the CPU", None),
    ("zoo.md", "Structural engine: coverage zoo", "## Per model"),
    ("engine_speed.md", "Structural engine: speed and memory", None),
    ("latency.md", "Structural engine: real CPU speed-up", None),
    ("language_models.md", "Language models (beyond the list): baselines trained here, Wanda, SparseGPT, "
     "structural pruning, 2:4 speed", None),
    ("llm_fair.md", "Language models on the fair protocol: one-shot 50% with magnitude and random controls", None),
    ("weight.md", "Weight pruning, part 1", None),
    ("weight_lenet5.md", "Weight pruning, LeNet-5", None),
    ("weight_lenet300_92.md", "Weight pruning at 92%, every training image", None),
    ("one_ticket.md", "Lottery-ticket transfer across tasks and optimizers", None),
    ("weight2.md", "Weight pruning, part 2", None),
]

HEADER = """# Benchmarks

Every table below was produced by a command in this repository, named in its section; the raw results
(JSON/JSONL) sit beside each section's source file in `benchmarks/results/`. This page is assembled from
those files by `python benchmarks/make_benchmarks_md.py`.

Machine for every figure on this page except the section that names a GPU: a shared x86_64 Linux virtual
machine with 2 CPU cores and 24 GB of memory, no GPU, torch 2.14.1 (CPU execution). The GPU section ran on
one NVIDIA H200 (torch 2.11.0+cu130). Several jobs shared the two cores while these ran, so wall
times carry noise of tens of percent; ratios measured side by side in one run (and MACs) are the reliable
figures. Accuracy budgets are small (short fine-tunes, data subsets), as each section states: compare rows
with each other, not with published numbers.

**Which tables are current.** The "fair protocol" sections come first (the sections marked interim hold their
first cells; the others are complete): every row there counts the
training it consumed, the control rows get the same total, Torch-Pruning is matched to prunekit's MACs and
rows whose mechanism did not engage are flagged. Every other filter and weight section below was measured
before the method harness and its faithfulness fixes (typed configs at the papers' defaults, mechanism
telemetry), on the old protocol. Rows of methods whose algorithm or default changed in that work are stale:
fpgm (soft schedule by default), sfp, csgd, gdp (interval in epochs), bn-ista, sss, slimming, implicit-sparsity,
dropnet (rewinds to an initialisation), taylor-fo and taylor-fm (the papers' scores), lth (per-layer rates),
one-ticket (late resetting), snip (train-mode scoring), snip-ldi (10,000 isometry steps), lap (neighbours
from the data flow), str (plain STR by default), deconstruct-lt (Bernoulli supermask, magnitude-increase
criterion). Torch-Pruning rows there run at a lower MAC fraction than prunekit's. Read them as history until
the fair-protocol grids cover them.
"""


def section(name: str, heading: str, cut: str | None) -> str:
    path = RESULTS / name
    if not path.exists():
        return f"## {heading}\n\n(not run yet: `{path.relative_to(ROOT)}` is missing)\n"
    text = path.read_text()
    if cut and cut in text:
        text = text[: text.index(cut)].rstrip() + f"\n\nThe per-model table is in `benchmarks/results/{name}`.\n"
    text = re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", text, flags=re.M)  # demote headings one level
    text = re.sub(r"\]\((?!http)([^)]+\.png)\)", r"](benchmarks/results/\1)", text)  # image paths from the root
    first, _, rest = text.partition("\n")
    return f"## {heading}\n\n(from `benchmarks/results/{name}`: {first.lstrip('# ').strip()})\n{rest}"


def main() -> None:
    parts = [HEADER] + [section(*s) for s in SECTIONS]
    (ROOT / "BENCHMARKS.md").write_text("\n\n".join(p.strip() + "\n" for p in parts))


if __name__ == "__main__":
    main()
