"""Real text for language models: split by document, a trained tokenizer, blocks, cache, perplexity."""
import math
import os

import pytest
import torch

from prunekit import data, models
from prunekit.data.text import CORPORA, load_text, split_documents
from prunekit.errors import ConfigError, DataError
from prunekit.measure import perplexity
from prunekit.train import evaluate

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
         "upsilon phi chi psi omega").split()


@pytest.fixture()
def corpus(tmp_path, monkeypatch):
    """A folder of 12 small documents (one nested) and a private cache."""
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "docs"
    g = torch.Generator().manual_seed(0)
    for i in range(12):
        sub = root / ("nested" if i == 5 else "")
        sub.mkdir(parents=True, exist_ok=True)
        idx = torch.randint(0, len(WORDS), (400,), generator=g).tolist()
        (sub / f"doc{i:02d}.txt").write_text(f"Document {i}.\n" + " ".join(WORDS[j] for j in idx) + "\n")
    (root / "ignored.html").write_text("<p>not a text document</p>")
    return root


def test_split_is_by_document_disjoint_and_independent_of_order():
    names = [f"library/mod{i}.rst.txt" for i in range(200)]
    a = split_documents(names)
    b = split_documents(list(reversed(names)))
    assert a == b
    assert sorted(a["train"] + a["val"] + a["test"]) == sorted(names)
    assert not (set(a["train"]) & set(a["test"]) or set(a["train"]) & set(a["val"]) or set(a["val"]) & set(a["test"]))
    assert 0.05 < len(a["test"]) / 200 < 0.18 and 0 < len(a["val"]) / 200 < 0.12
    small = split_documents(["a.txt", "b.txt", "c.txt"])  # no split left empty
    assert all(len(small[k]) == 1 for k in ("train", "val", "test"))


def test_text_bundle_blocks_are_next_token_pairs_with_a_validation_split_of_its_own(corpus):
    b = data.load(f"text:{corpus}", batch_size=4, seq_len=16, vocab_size=300)
    c = b.corpus
    assert b.num_classes == c.vocab_size <= 300 and b.input_size == 16 and b.in_channels == 1
    docs = c.documents
    assert len(docs["train"]) + len(docs["val"]) + len(docs["test"]) == 12  # the .html file is not a document
    assert "nested/doc05.txt" in docs["train"] + docs["val"] + docs["test"]
    x, y = next(iter(b.train))
    assert x.dtype == torch.long and x.shape == (4, 16)
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one token
    vx = torch.cat([v for v, _ in b.val])
    assert len(vx) == len(c.ids["val"]) // 16 or len(vx) == (len(c.ids["val"]) - 1) // 16
    # the validation blocks are the validation documents' tokens, in order
    assert torch.equal(vx.flatten(), torch.from_numpy(c.ids["val"][: vx.numel()].astype("int64")))


def test_tokenizer_round_trips_text_and_the_cache_gives_identical_ids(corpus, tmp_path):
    first = load_text(str(corpus), vocab_size=300)
    cached = list((tmp_path / "cache" / "text").iterdir())
    assert len(cached) == 1 and {p.name for p in cached[0].iterdir()} == {"tokenizer.json", "train.npy", "val.npy",
                                                                          "test.npy"}
    again = load_text(str(corpus), vocab_size=300)
    for s in ("train", "val", "test"):
        assert (first.ids[s] == again.ids[s]).all()
    text = (corpus / "doc00.txt").read_text()
    assert first.decode(first.tokenizer.encode(text).ids) == text
    assert len(first.tokenizer.encode(text).ids) < len(text.encode()) / 2  # BPE merges words: fewer tokens than bytes
    # a changed document is a different corpus: new cache entry, not stale ids
    (corpus / "doc00.txt").write_text("changed " * 50)
    load_text(str(corpus), vocab_size=300)
    assert len(list((tmp_path / "cache" / "text").iterdir())) == 2


def test_byte_tokenizer_is_raw_utf8(corpus):
    c = load_text(str(corpus), tokenizer="byte")
    assert c.vocab_size == 257 and c.tokenizer is None
    assert c.ids["train"].max() <= 256
    first = c.documents["train"][0]
    text = (corpus / first).read_text()
    assert c.decode(c.ids["train"][: len(text.encode())]) == text


@pytest.mark.parametrize("kwargs,match", [
    ({"name": "text"}, "needs a corpus: pass 'text:python-docs'"),
    ({"name": "text:no-such-corpus"}, "neither a known corpus"),
    ({"name": "text:CORPUS", "seq_len": 1}, "seq_len=1 must be an int >= 2"),
    ({"name": "text:CORPUS", "vocab_size": 100}, "vocab_size=100 must be an int from 257"),
    ({"name": "text:CORPUS", "tokenizer": "wordpiece"}, "tokenizer='wordpiece' must be 'bpe'"),
    ({"name": "text:CORPUS", "seq_len": 10 ** 6}, "seq_len=1000000 is longer than the"),
])
def test_text_bad_input(corpus, kwargs, match):
    kwargs = {k: (v.replace("CORPUS", str(corpus)) if isinstance(v, str) else v) for k, v in kwargs.items()}
    with pytest.raises(ConfigError, match=match):
        data.load(kwargs.pop("name"), **kwargs)


def test_folder_without_text_and_missing_named_corpus(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no .txt files"):
        data.load(f"text:{tmp_path / 'empty'}")
    monkeypatch.setitem(CORPORA, "python-docs", (str(tmp_path / "absent"), "install it with apt"))
    with pytest.raises(DataError, match="not found at .*install it with apt"):
        data.load("text:python-docs")


def test_perplexity_matches_the_mean_token_loss_and_a_uniform_model():
    b = data.load("synthetic-text", vocab_size=32, seq_len=8, n_train=64, n_test=48, batch_size=16)
    torch.manual_seed(0)
    m = models.create("gpt-tiny", num_classes=32, in_channels=1, input_size=8, d_model=16, n_layer=1, n_head=2)
    p = perplexity(m, b.test)
    ev = evaluate(m, b.test)
    assert p["tokens"] == 48 * 8
    assert math.isclose(p["perplexity"], ev["perplexity"], rel_tol=1e-5)
    assert math.isclose(math.log(p["perplexity"]), ev["loss"], rel_tol=1e-5)
    with torch.no_grad():  # a model that predicts nothing: perplexity = vocabulary size
        for prm in m.lm_head.parameters():
            prm.zero_()
    assert math.isclose(perplexity(m, b.test)["perplexity"], 32.0, rel_tol=1e-5)
    with pytest.raises(ConfigError, match="targets of shape \\[batch, tokens\\]"):
        perplexity(m, [(torch.zeros(2, 8, dtype=torch.long), torch.zeros(2, dtype=torch.long))])


def test_image_data_reports_no_perplexity():
    b = data.load("synthetic", n_train=32, n_test=16, batch_size=16)
    m = models.create("lenet5", num_classes=10, in_channels=1, input_size=28)
    assert "perplexity" not in evaluate(m, b.test)


@pytest.mark.skipif(not os.path.isdir(CORPORA["python-docs"][0]), reason="python3.11-doc is not installed")
def test_python_docs_corpus_splits_by_document():
    c = load_text("python-docs")
    n = {k: len(v) for k, v in c.documents.items()}
    assert sum(n.values()) > 400 and n["test"] > 20 and n["val"] > 10
    assert len(c.ids["train"]) > 1_000_000 and c.vocab_size == 4096
