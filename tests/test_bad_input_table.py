"""The bad-input table (issue 15, items 6-8): one row per bad input, by family.

Each row: a case -> the fragment its error must contain. For every row the test also checks that the error is
a ``PrunekitError`` (the CLI: exit code 2 and the message on stderr, no traceback), that the model's
state_dict hash is what it was, and that no file in the working folder was changed, added or removed.
The families and their counts are listed in docs/cli.md ("Errors").
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.cli import main
from prunekit.errors import PrunekitError
from prunekit.recipe import Recipe
from prunekit.testing import models


def _chain():
    return models()["chain"]()


def _model_hash(model) -> str | None:
    if model is None:
        return None
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        if v.is_meta:
            h.update(str(tuple(v.shape)).encode())
        else:
            h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def _files_hash(root) -> dict:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


# ---- the cases ------------------------------------------------------------------------------------------
# each builder gets the case's folder and returns (model or None, action); ``action()`` must fail
API: dict = {}


def case(family: str, name: str, fragment: str, marks=()):
    def deco(fn):
        API[f"{family}/{name}"] = (fn, fragment, marks)
        return fn
    return deco


def _plan_with(**kw):
    def build(tmp):
        m, x = _chain()
        return m, lambda: pk.plan(m, x, **kw)
    return build


def _prune_with(**kw):
    def build(tmp):
        m, x = _chain()
        return m, lambda: pk.prune_(m, example_inputs=x, **kw)
    return build


def _sparsify_with(**kw):
    def build(tmp):
        m, _ = _chain()
        return m, lambda: pk.sparsify_(m, **kw)
    return build


X = torch.randn(2, 3, 8, 8)
Y = torch.tensor([0, 1])

# family: misspelt keyword (a ConfigError with the closest name, not a bare TypeError)
case("keyword", "plan sparsty", "did you mean sparsity=")(_plan_with(sparsty=0.5))
case("keyword", "prune_ sparsty", "did you mean sparsity=")(_prune_with(sparsty=0.5))
case("keyword", "sparsify_ sparsty", "did you mean sparsity=")(_sparsify_with(sparsty=0.5))
case("keyword", "plan critrion", "did you mean criterion=")(_plan_with(sparsity=0.5, critrion="l1"))
case("keyword", "sparsify_ patern", "did you mean pattern=")(_sparsify_with(sparsity=0.5, patern="2:4"))
case("keyword", "allow_nonfinite not bool", "allow_nonfinite='yes' must be True or False")(
    _plan_with(sparsity=0.5, allow_nonfinite="yes"))

# family: target grammar (one grammar; hints never name the opposite meaning)
for _t, _frag in [("flops=0.5", "did you mean 'macs'"), ("sparsty=0.5", "did you mean 'sparsity'"),
                  ("keep=0.5", "did you mean 'params'"), ("prune=0.9", "did you mean 'sparsity'"),
                  ("macs", "is not a target"), ("macs=abc", "'abc' is not a number"),
                  ("macs=0", r"fraction kept must be in \(0, 1\]"), ("macs=1.5", r"fraction kept must be in"),
                  ("params=-1", "fraction kept must be in"), ("sparsity=1", r"fraction removed and must be in \[0, 1\)"),
                  ("sparsity=-0.1", "fraction removed"), ("macs=nan", "fraction kept must be in"),
                  ("params=inf", "fraction kept must be in"), ("macs=0.5=1", "is not a target"), ("", "is not a target"),
                  ("=0.5", "unknown target kind ''")]:
    case("target", f"plan {_t!r}", _frag)(_plan_with(target=_t))
case("target", "prune_ 'flops=0.5'", "did you mean 'macs'")(_prune_with(target="flops=0.5"))
case("target", "not a string", "is not a target")(_plan_with(target=0.5))
case("target", "sparsity and target", "give either sparsity= or target=")(_plan_with(sparsity=0.5, target="macs=0.5"))
case("target", "nothing to prune", "say how much to prune")(_plan_with())

# family: other plan arguments
for _kw, _frag in [(dict(sparsity=1.0), r"must be a float in \[0, 1\)"), (dict(sparsity=-0.1), "must be a float"),
                   (dict(sparsity="0.5"), "must be a float"), (dict(sparsity=float("nan")), "must be a float"),
                   (dict(sparsity=True), "must be a float"),
                   (dict(sparsity=0.5, criterion="l3"), "did you mean"),
                   (dict(sparsity=0.5, reduce="grup"), "did you mean 'group'"),
                   (dict(sparsity=0.5, trace="fast"), "trace='fast' is not valid"),
                   (dict(sparsity=0.5, round_to=0), "round_to=0 must be an int >= 1"),
                   (dict(sparsity=0.5, min_channels=-1), "min_channels=-1 must be an int >= 0"),
                   (dict(sparsity=0.5, ignore=["conv9"]), "'conv9' matches no module; did you mean 'conv"),
                   (dict(sparsity=0.5, per_layer={"conv9": 0.5}), "matches no prunable layer"),
                   (dict(per_layer={"conv1": 1.5}), r"per_layer\['conv1'\]=1.5")]:
    case("plan args", repr(_kw), _frag)(_plan_with(**_kw))


@case("plan args", "model not a module", "is not a torch.nn.Module")
def _(tmp):
    return None, lambda: pk.plan("resnet20", X, sparsity=0.5)


@case("plan args", "prune_ plan and keywords", "give either a plan or keywords")
def _(tmp):
    m, x = _chain()
    p = pk.plan(m, x, sparsity=0.5)
    return m, lambda: pk.prune_(m, p, sparsity=0.5)


@case("plan args", "prune_ not a plan", "is not a prunekit Plan")
def _(tmp):
    m, x = _chain()
    return m, lambda: pk.prune_(m, {"groups": []})


@case("plan args", "prune_ no plan no inputs", "needs either a plan or example_inputs")
def _(tmp):
    m, _ = _chain()
    return m, lambda: pk.prune_(m, sparsity=0.5)


# family: sparsify_ arguments
for _kw, _frag in [(dict(sparsity=0.5, pattern="2:5x"), "pattern"), (dict(sparsity=0.5, criterion="magnitud"),
                                                                     "did you mean 'magnitude'"),
                   (dict(sparsity=0.5, allocation="glob"), "allocation"), (dict(sparsity=0.5, mode="soft"), "mode"),
                   (dict(sparsity=1.5), "sparsity"), (dict(sparsity=0.5, criterion="snip"), "needs calib")]:
    case("sparsify args", repr(_kw), _frag)(_sparsify_with(**_kw))

# family: non-finite weights (NaN/Inf), named, refused by every verb


def _poisoned(where: str, value: float):
    m, x = _chain()
    with torch.no_grad():
        t = dict(m.named_parameters(), **dict(m.named_buffers()))[where]
        t.view(-1)[0] = value
    return m, x


for _verb in ("plan", "prune_", "sparsify_"):
    for _where, _val in (("conv2.weight", float("nan")), ("fc.bias", float("inf")), ("bn1.running_var", float("nan"))):
        def _build(tmp, verb=_verb, where=_where, val=_val):
            m, x = _poisoned(where, val)
            call = {"plan": lambda: pk.plan(m, x, sparsity=0.5), "prune_": lambda: pk.prune_(m, example_inputs=x,
                                                                                             sparsity=0.5),
                    "sparsify_": lambda: pk.sparsify_(m, sparsity=0.5)}[verb]
            return m, call
        case("non-finite weights", f"{_verb} {_where}={_val}", f"non-finite weights.*'{_where}'.*allow_nonfinite=True")(
            _build)

# family: calibration batches (named `calib`; also through sparsify_(criterion="snip"))
_NAN_X = X.clone()
_NAN_X[0, 0, 0, 0] = float("nan")
for _verb, _kw in (("plan", dict(sparsity=0.5, criterion="taylor")), ("sparsify_", dict(sparsity=0.5, criterion="snip")),
                   ("prune_", dict(sparsity=0.5, criterion="taylor"))):
    for _calib, _frag in [([(torch.randn(2, 5, 8, 8), Y)], r"calib: the model cannot run batch 0, whose inputs are "
                                                             r"\(2, 5, 8, 8\)"),
                          ([(X, torch.tensor([0, 1, 2]))], r"calib: the targets of batch 0 \(\(3,\) int64\)"),
                          ([X], "calib: batch 0 is .* not an \\(inputs, targets\\) pair"),
                          ([], "calib is empty"), (5, "calib=int is not an iterable"),
                          ([(_NAN_X, Y)], "calib: batch 0 gives non-finite activations")]:
        def _build(tmp, verb=_verb, kw=_kw, calib=_calib):
            m, x = _chain()
            call = {"plan": lambda: pk.plan(m, x, calib=calib, **kw),
                    "prune_": lambda: pk.prune_(m, example_inputs=x, calib=calib, **kw),
                    "sparsify_": lambda: pk.sparsify_(m, calib=calib, **kw)}[verb]
            return m, call
        case("calib", f"{_verb} {_frag[:30]}", _frag)(_build)

# family: meta-device models (no values) refused clearly
for _verb in ("plan", "prune_", "sparsify_"):
    def _build(tmp, verb=_verb):
        m, x = _chain()
        m = m.to("meta")
        call = {"plan": lambda: pk.plan(m, x, sparsity=0.5), "prune_": lambda: pk.prune_(m, example_inputs=x,
                                                                                         sparsity=0.5),
                "sparsify_": lambda: pk.sparsify_(m, sparsity=0.5)}[verb]
        return m, call
    case("meta device", _verb, "on the meta device .* model.to_empty")(_build)


# family: data-dependent control flow: the plan covers the traced path; calib batches check the pruned model
class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.e = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2), nn.Linear(8, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        if x.sum() > 0:
            return self.c(torch.relu(self.b(h)))
        return self.e(h)


@case("data-dependent", "pruned model fails another branch of calib", "fails on calib batch 1 .* the model was restored")
def _(tmp):
    m, x = Branchy(), torch.ones(2, 4)
    calib = [(x, Y), (-x, Y)]
    return m, lambda: pk.prune_(m, example_inputs=x, sparsity=0.5, criterion="taylor", calib=calib)


# family: recipes (files)
def _recipe_file(name: str, content: bytes | str):
    def build(tmp):
        p = tmp / name
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        return None, lambda: Recipe.load(p)
    return build


for _name, _content, _frag in [
        ("empty.yaml", "", "is empty"), ("comments.yaml", "# nothing\n\n", "is empty"), ("null.yaml", "null\n", "is empty"),
        ("binary.yaml", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "is a binary file"),
        ("zeros.json", b"\x00" * 64, "is a binary file"), ("latin1.yaml", "model: r\xe9snet\n".encode("latin-1"),
                                                             "is a binary file"),
        ("list.yaml", "- a\n- b\n", "expected a mapping"), ("bad.json", "{model: 1", "is not valid JSON"),
        ("bad.yaml", "model: [1\n", "is not valid YAML"), ("r.txt", "model: lenet5\n", "unknown extension"),
        ("key.yaml", "finetune_epoch: 1\n", "did you mean 'finetune_epochs'"),
        ("type.yaml", "type: other\n", "is not a recipe"), ("version.yaml", "version: 9\n", "is not supported"),
        ("lr.yaml", "lr: -1\n", "lr=-1 must be a positive number"), ("lrs.yaml", "lr: fast\n", "must be a positive number"),
        ("bs.yaml", "batch_size: 0\n", "batch_size=0 must be an integer >= 1"),
        ("epochs.yaml", "finetune_epochs: 1.5\n", "must be an integer"), ("ignore.yaml", "ignore: 5\n", "ignore=5"),
        ("latency.yaml", "latency: maybe\n", "latency='maybe' must be true or false"),
        ("device.yaml", "device: tpu\n", "device='tpu': choose one of"),
        ("target.yaml", "target: flops=0.5\n", "did you mean 'macs'"), ("subset.yaml", "subset: 0\n", "subset=0"),
        ("options.yaml", "options: 3\n", "options=3 must be a mapping"), ("model.yaml", "model: ''\n", "non-empty"),
        ("many.yaml", "lr: -1\nbatch_size: 0\ntarget: macs=2\n", "^(?=.*lr=-1 )(?=.*batch_size=0)(?=.*fraction kept)")]:
    case("recipe", _name, _frag)(_recipe_file(_name, _content))


@case("recipe", "missing file", "does not exist")
def _(tmp):
    return None, lambda: Recipe.load(tmp / "nope.yaml")


@case("recipe", "a folder", "does not exist")
def _(tmp):
    (tmp / "d.yaml").mkdir()
    return None, lambda: Recipe.load(tmp / "d.yaml")


# family: saved models (prunekit.io)

def _saved(tmp):
    m, _ = _chain()
    p = tmp / "m.safetensors"
    pk.save(m, p)
    return m, p


@case("io", "load missing file", "no such file")
def _(tmp):
    return None, lambda: pk.load(tmp / "nope.safetensors", lambda: _chain()[0])


@case("io", "load with another model's factory", "does not match the architecture")
def _(tmp):
    m, p = _saved(tmp)
    return m, lambda: pk.load(p, lambda: nn.Linear(3, 3))


def _rewritten(tmp, change):
    """A one-file save whose header record is changed by ``change(meta) -> str`` (the tensor hash kept valid)."""
    from safetensors.torch import load_file, save_file

    from prunekit.io import _META_KEY

    m, p = _saved(tmp)
    from safetensors import safe_open

    with safe_open(str(p), "pt") as f:
        meta = json.loads(f.metadata()[_META_KEY])
    save_file(load_file(str(p)), str(p), metadata={_META_KEY: change(meta)})
    return m, lambda: pk.load(p, lambda: _chain()[0])


@case("io", "header record not JSON", "not valid JSON")
def _(tmp):
    return _rewritten(tmp, lambda meta: "{")


@case("io", "weights changed after save", "sha256")
def _(tmp):
    m, p = _saved(tmp)
    data = bytearray(p.read_bytes())
    data[-1] ^= 1
    p.write_bytes(bytes(data))
    return m, lambda: pk.load(p, lambda: _chain()[0])


@case("io", "save into a folder that cannot be written", "cannot write")
def _(tmp):
    m, _ = _chain()
    return m, lambda: pk.save(m, "/proc/m.safetensors")


@case("io", "record's shapes do not fit the file", "conv1.weight")
def _(tmp):
    def change(meta):
        meta["shapes"]["conv1.weight"] = [3, 3]
        return json.dumps(meta)

    return _rewritten(tmp, change)


def _not_safetensors(tmp, payload: bytes):
    m, p = _saved(tmp)
    p.write_bytes(payload)
    return m, lambda: pk.load(p, lambda: _chain()[0])


@case("io", "a pickle named .safetensors", "safetensors")
def _(tmp):
    return _not_safetensors(tmp, pickle.dumps({"a": 1}))


@case("io", "a torch zip named .safetensors", "safetensors")
def _(tmp):
    import io as _io

    buf = _io.BytesIO()
    torch.save(_chain()[0].state_dict(), buf)
    return _not_safetensors(tmp, buf.getvalue())


# family: the command line (exit code 2, the message on stderr, nothing written)
CLI: dict = {}
RUN = ("run", "--model", "lenet5", "--data", "synthetic", "--baseline", "none", "--method", "criterion:l1")


def cli_case(family: str, name: str, args: tuple, fragment: str, setup=None, marks=()):
    CLI[f"{family}/{name}"] = (args, fragment, setup, marks)


_NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
cli_case("cli device", "run --device cuda", (*RUN, "--device", "cuda"), "no CUDA GPU is available.*--device cpu",
         marks=(_NO_CUDA,))
cli_case("cli device", "run --device cuda:7", (*RUN, "--device", "cuda:7"), "device='cuda:7'")
cli_case("cli device", "eval --device cuda", ("eval", "--model", "lenet5", "--data", "synthetic", "--device", "cuda"),
         "no CUDA GPU", marks=(_NO_CUDA,))
cli_case("cli device", "train --device cuda", ("train", "--model", "lenet5", "--data", "synthetic", "--device",
                                               "cuda"), "no CUDA GPU", marks=(_NO_CUDA,))
cli_case("cli device", "run --device tpu", (*RUN, "--device", "tpu"), "device='tpu': choose one of")
cli_case("cli export", "unwritable path", ("export", "--model", "lenet5", "--onnx", "/proc/m.onnx"),
         "onnx='/proc/m.onnx' cannot be written")
cli_case("cli export", "path under a file", ("export", "--model", "lenet5", "--onnx", "f/m.onnx"),
         "onnx='f/m.onnx' cannot be written", setup=lambda tmp: (tmp / "f").write_text("x"))
cli_case("cli export", "path is a folder", ("export", "--model", "lenet5", "--onnx", "d.onnx"), "it is a folder",
         setup=lambda tmp: (tmp / "d.onnx").mkdir())
cli_case("cli export", "--opset 3", ("export", "--model", "lenet5", "--onnx", "m.onnx", "--opset", "3"),
         r"opset=3 is not supported .* use --opset 17")
cli_case("cli export", "--opset 99", ("export", "--model", "lenet5", "--onnx", "m.onnx", "--opset", "99"),
         "opset=99 is not supported")
cli_case("cli export", "--opset x", ("export", "--model", "lenet5", "--onnx", "m.onnx", "--opset", "x"),
         "--opset 'x' is not an integer")
cli_case("cli export", "missing file", ("export", "--model", "runs/x/model.safetensors", "--onnx", "m.onnx"),
         "no such file")
cli_case("cli export", "not .onnx", ("export", "--model", "lenet5", "--onnx", "m.txt"), "must end in .onnx")
cli_case("cli export", "unknown model", ("export", "--model", "lenet55", "--onnx", "m.onnx"), "did you mean 'lenet5'")
cli_case("cli export", "bad input shape", ("export", "--model", "lenet5", "--onnx", "m.onnx", "--input-shape", "a,b"),
         "--input-shape 'a,b' is not a shape")
cli_case("cli recipe", "binary", ("run", "--recipe", "r.yaml"), "is a binary file",
         setup=lambda tmp: (tmp / "r.yaml").write_bytes(b"\x00\x01\x02\xff" * 8))
cli_case("cli recipe", "empty", ("run", "--recipe", "r.yaml"), "is empty",
         setup=lambda tmp: (tmp / "r.yaml").write_text(""))
cli_case("cli recipe", "missing", ("run", "--recipe", "nope.yaml"), "does not exist")
cli_case("cli flags", "five bad flags at once",
         ("run", "--model", "lenet55", "--data", "fashion-mnst", "--method", "l1-filtr", "--target", "flops=0.5",
          "--lr", "abc", "--baseline", "none"), r"5 problems:(.|\n)*--lr 'abc'(.|\n)*flops(.|\n)*lenet55(.|\n)*"
                                               r"fashion-mnst(.|\n)*l1-filtr")
cli_case("cli flags", "recipe field errors and names together",
         ("run", "--model", "lenet55", "--lr", "-1", "--batch-size", "0", "--baseline", "none"),
         r"(?s)^(?=.*lr=-1)(?=.*batch_size=0)(?=.*lenet55).*2 problems:")
cli_case("cli flags", "type errors together", (*RUN, "--finetune-epochs", "x", "--seed", "y", "--subset", "z"),
         r"3 problems:(.|\n)*--finetune-epochs 'x'(.|\n)*--seed 'y'(.|\n)*--subset 'z'")
cli_case("cli flags", "unknown flag with hint", (*RUN, "--finetune-epoch-count", "3"), "unknown flag "
         "'--finetune-epoch-count'; did you mean --finetune-epochs")
cli_case("cli flags", "stray value", (*RUN, "macs=0.5"), "unexpected argument 'macs=0.5'")
cli_case("cli flags", "target sparsity out of range", (*RUN, "--target", "sparsity=1.5"), "fraction removed")
cli_case("cli flags", "target params=0", (*RUN, "--target", "params=0"), "fraction kept")
cli_case("cli flags", "option not KEY=VALUE", (*RUN, "--option", "oops"), "must be KEY=VALUE")
cli_case("cli flags", "prune bad target", ("prune", "--model", "lenet5", "--target", "flops=0.5", "--out", "o"),
         "did you mean 'macs'")
cli_case("cli flags", "inspect bad shape", ("inspect", "--model", "lenet5", "--input-shape", "1,a"),
         "--input-shape '1,a' is not a shape")
cli_case("cli flags", "bench threads 0", ("bench", "grid.yaml", "--threads", "0"), "--threads 0 must be at least 1")
cli_case("cli flags", "eval missing model file", ("eval", "--model", "runs/x/model.safetensors", "--data",
                                                  "synthetic"), "no such file")


def _params(table):
    return [pytest.param(k, id=k, marks=list(v[-1])) for k, v in table.items()]


@pytest.mark.parametrize("key", _params(API))
def test_api_bad_input(key, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build, fragment, _ = API[key]
    model, action = build(tmp_path)
    before_model, before_files = _model_hash(model), _files_hash(tmp_path)
    with pytest.raises(PrunekitError) as info:
        action()
    assert re.search(fragment, str(info.value)), str(info.value)
    assert _model_hash(model) == before_model, "the model changed"
    assert _files_hash(tmp_path) == before_files, "files changed"


@pytest.mark.parametrize("key", _params(CLI))
def test_cli_bad_input(key, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args, fragment, setup, _ = CLI[key]
    if setup:
        setup(tmp_path)
    before = _files_hash(tmp_path)
    code = main(list(args))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"prunekit {args[0]}: error: "), err
    assert "Traceback" not in err
    assert re.search(fragment, err), err
    assert _files_hash(tmp_path) == before  # nothing written, changed or left behind


def test_table_is_large():
    """docs/cli.md counts these rows; keep the count there in step."""
    assert len(API) + len(CLI) >= 129


def test_sparsity_target_means_fraction_removed():
    """target='sparsity=0.9' (the CLI's documented form) is accepted by the API and means 90% of the parameters
    removed, the same budget as params=0.1 (never refused with a hint towards params=0.9)."""
    m, x = _chain()
    a = pk.plan(m, x, target="sparsity=0.75")
    b = pk.plan(m, x, target="params=0.25")
    assert a.predicted == b.predicted
    assert a.predicted["params_after"] <= 0.25 * a.predicted["params_before"]


def test_nonfinite_override_prunes_anyway():
    m, x = _poisoned("conv2.weight", float("nan"))
    rep = pk.prune_(m, example_inputs=x, sparsity=0.5, allow_nonfinite=True)
    assert rep.params_after < rep.params_before
    m, _ = _poisoned("fc.bias", float("inf"))
    assert pk.sparsify_(m, sparsity=0.5, allow_nonfinite=True).sparsity == pytest.approx(0.5, abs=0.05)


def test_data_dependent_flow_is_reported():
    """A forward whose path depends on the input's values is traced down one branch: the report says so."""
    m, x = Branchy(), torch.ones(2, 4)
    rep = pk.prune_(m, example_inputs=x, sparsity=0.5)
    assert any("data-dependent control flow" in n and "traced path only" in n for n in rep.notes)
    assert "traced path only" in str(rep)
    m1 = Branchy()
    p = pk.plan(m1, x, sparsity=0.5)  # a plan made first, applied later: the report still says so
    assert any("traced path only" in n for n in pk.prune_(m1, p).notes)
    m2, x2 = _chain()
    assert pk.prune_(m2, example_inputs=x2, sparsity=0.5).notes == []


def test_data_dependent_flow_checked_on_calib_when_it_fits():
    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            h = self.a(x)
            if x.sum() < 0:  # a branch that does not involve the pruned channels
                h = -h
            return self.b(torch.relu(h))

    m, x = Gate(), torch.ones(2, 4)
    rep = pk.prune_(m, example_inputs=x, sparsity=0.5, criterion="taylor", calib=[(x, Y), (-x, Y)])
    assert "the pruned model ran every calibration batch" in rep.notes
    assert m.a.out_features == 4
