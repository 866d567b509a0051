"""The layer order of docs/design.md holds: every prunekit-internal import goes downward and lives at module
level, and each package imports alone in a fresh interpreter (a cycle that shows only on one import order
fails here)."""
import ast
import pathlib
import re
import subprocess
import sys

import prunekit

ROOT = pathlib.Path(prunekit.__file__).parent
DESIGN = ROOT.parent / "docs" / "design.md"

# (importing unit, imported unit, "top" | "fn") -> why it is allowed for now. A unit is prunekit.X (a package
# or a module); "prunekit" is the package's own __init__ (the lazy facade ``import prunekit as pk``).
ALLOWED = {
    ("cli", "workflows", "fn"): "start-up time: `import prunekit.cli` takes 0.1-0.2 s, `import prunekit.workflows` "
                                "7-8 s (measured on the shared 2-core machine, 2026-12-07)",
    ("cli", "report", "fn"): "start-up time, as cli -> workflows",
    ("methods", "prunekit", "top"): "the facade's verbs (pk.plan, pk.prune_, pk.sparsify_) resolve to api and "
                                    "masks, below methods; the methods' owners import them from there",
    ("workflows", "prunekit", "top"): "the facade's verbs resolve to api and masks, below workflows",
    ("masks", "methods", "fn"): "a weight criterion or pattern a method registers is looked up by name before "
                                "the methods are imported (load_all on a miss); fix: a load hook in _registry",
    ("methods", "methods", "fn"): "MethodSpec.run (_registry) calls _harness.run_method, which imports "
                                  "_registry's types; fix: MethodSpec.run moves into _harness",
    ("schedules", "train", "top"): "schedules' callbacks subclass train.Callback while train.rewind uses them; "
                                   "fix: train/callbacks.py (imports nothing of prunekit) moves below schedules",
    ("cli", "bench", "fn"): "start-up time, as cli -> workflows",
}


def _layers() -> list:
    """The "Layer order" section of docs/design.md: one line per layer, lowest first, ``N. `a`, `b` ...``."""
    text = DESIGN.read_text()
    section = text.split("## Layer order", 1)[1].split("\n## ", 1)[0]
    layers = []
    for line in section.splitlines():
        m = re.match(r"\s*\d+\.\s+(.*)", line)
        if m:
            layers.append(re.findall(r"`([\w.]+)`", m.group(1).split(":")[0]))
    return layers


def _unit(parts: tuple) -> str:
    """prunekit.X.Y -> "X"; prunekit itself -> "prunekit"."""
    return parts[1] if len(parts) > 1 else "prunekit"


def _imports():
    """(file, line, importing unit, imported unit, "top" | "fn") of every prunekit-internal import."""
    out = []
    for f in sorted(ROOT.rglob("*.py")):
        rel = f.relative_to(ROOT.parent).with_suffix("").parts  # ("prunekit", "api", "planning")
        package = rel[:-1]  # what a relative import starts from (an __init__ is its package)
        src = _unit(package if f.name == "__init__.py" else rel)
        tree = ast.parse(f.read_text(), str(f))
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1]
                    full = base + tuple(node.module.split(".")) if node.module else base
                elif (node.module or "").split(".")[0] == "prunekit":
                    full = tuple(node.module.split("."))
                else:
                    continue
                # `from prunekit import x` / `from .. import x`: x is a unit when it is a submodule
                targets = [full] if len(full) > 1 else [full + (a.name,) if a.name in _UNITS else full
                                                        for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [tuple(a.name.split(".")) for a in node.names if a.name.split(".")[0] == "prunekit"]
            else:
                continue
            for t in targets:
                out.append((f.relative_to(ROOT.parent), node.lineno, src, _unit(t),
                            "top" if id(node) in top else "fn"))
    return out


_UNITS = {p.stem for p in ROOT.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()} - {"__init__"}


def test_the_layer_order_names_every_unit_once():
    layers = _layers()
    named = [u for layer in layers for u in layer]
    assert len(named) == len(set(named)), named
    assert set(named) == _UNITS | {"prunekit"}, sorted(set(named) ^ (_UNITS | {"prunekit"}))


def test_imports_go_downward_and_live_at_module_level():
    rank = {u: i for i, layer in enumerate(_layers()) for u in layer}
    bad = []
    for f, line, src, tgt, where in _imports():
        if (src, tgt, where) in ALLOWED:
            continue
        if where == "fn":
            bad.append(f"{f}:{line}: function-level import of prunekit.{tgt} (move it to the top of the module)")
        elif src != tgt and rank[tgt] >= rank[src]:
            bad.append(f"{f}:{line}: {src} (layer {rank[src]}) imports {tgt} (layer {rank[tgt]}): not downward")
    assert not bad, "\n".join(bad)


def test_every_allow_list_entry_is_still_needed():
    used = {(src, tgt, where) for _, _, src, tgt, where in _imports()}
    assert not set(ALLOWED) - used, sorted(set(ALLOWED) - used)


def test_each_package_imports_alone_in_a_fresh_interpreter():
    units = sorted(u for layer in _layers() for u in layer if u not in ("prunekit", "__main__"))
    script = (
        "import importlib, sys\n"
        f"units = {units!r}\n"
        "failed = []\n"
        "for u in units:\n"
        "    for name in [n for n in sys.modules if n == 'prunekit' or n.startswith('prunekit.')]:\n"
        "        del sys.modules[name]\n"
        "    try:\n"
        "        importlib.import_module('prunekit.' + u)\n"
        "    except Exception as e:\n"
        "        failed.append(f'{u}: {type(e).__name__}: {e}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                       cwd=ROOT.parent)
    assert r.returncode == 0, r.stdout + r.stderr
