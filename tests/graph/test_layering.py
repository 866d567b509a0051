"""The graph package sits below surgery: tracing never imports surgery, and neither package hides an import
of a prunekit module inside a function (the layer order of docs/design.md, lowest first)."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import prunekit

ROOT = Path(prunekit.__file__).resolve().parent
# what each package may import from prunekit (besides itself): errors and _registry are the lowest layer
ALLOWED = {"graph": {"errors", "_registry"}, "surgery": {"errors", "_registry", "graph"}}

TRACE_IN_FRESH_INTERPRETER = """
import sys
import torch
torch.set_num_threads(1)
from prunekit.graph import build_graph


class Net(torch.nn.Module):  # an attention (traced through its op-by-op twin) between two linears
    def __init__(self):
        super().__init__()
        self.inp = torch.nn.Linear(4, 8)
        self.attn = torch.nn.MultiheadAttention(8, 2, batch_first=True)
        self.out = torch.nn.Linear(8, 3)

    def forward(self, x):
        h = self.inp(x)
        return self.out(self.attn(h, h, h, need_weights=False)[0])


graph = build_graph(Net(), torch.randn(2, 5, 4))
assert any(m.fqn == "attn.in_proj_weight" for g in graph.groups for m in g.members), "heads not analysed"
print(" ".join(sorted(name for name in sys.modules if name.startswith("prunekit"))))
"""


def test_tracing_an_attention_model_imports_no_surgery_module():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", TRACE_IN_FRESH_INTERPRETER], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = done.stdout.split()
    assert "prunekit.graph.trace" in loaded  # the trace did run in that interpreter
    assert [m for m in loaded if m.startswith("prunekit.surgery")] == []
    assert {m.split(".")[1] for m in loaded if "." in m} <= {"graph", *ALLOWED["graph"]}


def _prunekit_imports(path: Path):
    """(line, imported prunekit package, inside a function?) for every import of a prunekit module in ``path``."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    here = list(path.relative_to(ROOT.parent).parts[:-1])  # the package the file belongs to
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - node.level + 1]
                names = [".".join(base + ([node.module] if node.module else []))]
                if not node.module:  # from . import x
                    names = [".".join(base + [a.name]) for a in node.names]
            else:
                names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        up, in_function = node, False
        while up in parents:
            up = parents[up]
            in_function |= isinstance(up, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for name in names:
            parts = name.split(".")
            if parts[0] == "prunekit" and len(parts) > 1:
                found.append((node.lineno, parts[1], in_function))
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down_and_sit_at_module_level(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    wrong = []
    for path in files:
        for line, target, in_function in _prunekit_imports(path):
            where = f"{path.relative_to(ROOT.parent)}:{line} imports prunekit.{target}"
            if in_function:
                wrong.append(f"{where} inside a function")
            if target != package and target not in ALLOWED[package]:
                wrong.append(f"{where}, above {package} in the layer order")
    assert not wrong, "\n".join(wrong)
