"""Real text for language models: a corpus of documents, split by document, a byte-level BPE tokenizer trained
on the training documents, and fixed-length blocks of token ids.

The default corpus, ``python-docs``, is the reStructuredText source of the Python documentation that Debian's
``python3.11-doc`` package installs (``_sources`` of the HTML tree: about 500 documents, 12 MB of English prose
with code). It was chosen over the King James Bible (``bible-kjv-text``) because it is plain text on disk (the
Bible package stores a compressed index that needs its own reader), because its documents are a natural unit to
split by (a page of the library reference, a tutorial chapter), and because technical prose with code is closer
to what users prune language models for. Any folder of ``.txt`` files is a corpus too: ``text:/path/to/folder``.

Documents are assigned to train / validation / test by a hash of their path inside the corpus, so the split does
not depend on the seed or on the order files are listed in, and no document is in two splits. The tokenizer
(Hugging Face ``tokenizers``, byte-level BPE; or raw bytes with ``tokenizer="byte"``) is trained on the training
documents only. Each split is the concatenation of its documents, each followed by an end-of-document token,
cut into blocks of ``seq_len + 1`` tokens that overlap by one: inputs are a block's first ``seq_len`` tokens,
targets its last ``seq_len`` (next-token prediction).

Tokenizer and token ids are cached (``$PRUNEKIT_CACHE``, else ``$XDG_CACHE_HOME/prunekit``, else
``~/.cache/prunekit``; under ``text/``) by a hash of the corpus content and the tokenizer settings, written
atomically, so the second load of a corpus takes a fraction of a second.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError

log = logging.getLogger(__name__)

__all__ = ["CORPORA", "TextCorpus", "read_documents", "split_documents", "train_tokenizer", "load_text",
           "cache_dir", "EOD"]

#: corpus name -> (folder, how to get it)
CORPORA: dict[str, tuple[str, str]] = {
    "python-docs": ("/usr/share/doc/python3.11/html/_sources",
                    "install it with 'sudo apt-get install python3.11-doc' (Debian/Ubuntu), or pass "
                    "data_dir=FOLDER (--data-dir FOLDER) holding the documentation's .txt sources"),
}
EOD = "<|endoftext|>"  # end-of-document token, id 0 in a BPE vocabulary (byte tokenizer: id 256)
_SPLITS = ("train", "val", "test")


def cache_dir() -> Path:
    """Where tokenizers and token ids are cached: ``$PRUNEKIT_CACHE``, else the user cache's ``prunekit``."""
    env = os.environ.get("PRUNEKIT_CACHE")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "prunekit"


def read_documents(folder: str | os.PathLike) -> dict[str, str]:
    """Every ``*.txt`` file under ``folder`` (recursively), as ``{path relative to folder: text}``, sorted."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"corpus folder {str(folder)!r} does not exist")
    docs = {}
    for p in sorted(root.rglob("*.txt")):
        if p.is_file():
            docs[p.relative_to(root).as_posix()] = p.read_text(encoding="utf-8", errors="replace")
    if not docs:
        raise DataError(f"corpus folder {str(folder)!r} holds no .txt files; pass a folder of plain-text documents")
    return docs


def _unit(name: str) -> float:
    """A number in [0, 1) fixed by the document's name (its split does not depend on seed or listing order)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2.0 ** 64


def split_documents(names, *, val_fraction: float = 0.05, test_fraction: float = 0.1) -> dict[str, list[str]]:
    """Assign each document name to ``train``, ``val`` or ``test`` by a hash of the name; every split gets at
    least one document when there are three or more.

    Example:
        >>> s = split_documents([f"doc{i}.txt" for i in range(100)])
        >>> [len(s[k]) for k in ("train", "val", "test")]
        [92, 2, 6]
    """
    names = sorted(names)
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError(f"val_fraction={val_fraction!r}, test_fraction={test_fraction!r}: each must be in (0, 1) "
                          f"and their sum below 1, e.g. 0.05 and 0.1")
    out = {k: [] for k in _SPLITS}
    for n in names:
        u = _unit(n)
        out["test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"].append(n)
    if len(names) >= 3:  # a tiny corpus: move documents so that no split is empty
        for k in ("test", "val"):
            if not out[k]:
                out[k].append(out["train"].pop(min(range(len(out["train"])), key=lambda i: _unit(out["train"][i]))))
    if not out["train"]:
        raise DataError(f"the corpus has {len(names)} document(s): too few to split by document into train, "
                        f"validation and test; give at least 3")
    return out


def train_tokenizer(texts, vocab_size: int):
    """A byte-level BPE tokenizer (Hugging Face ``tokenizers``) trained on ``texts``, with ``EOD`` as id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


@dataclass
class TextCorpus:
    """Token ids of each split (1-D int32 arrays, documents separated by the end-of-document id), the
    tokenizer (``None`` for bytes), and how the corpus was split."""

    name: str
    ids: dict[str, np.ndarray]
    vocab_size: int
    documents: dict[str, list[str]]
    tokenizer_kind: str
    tokenizer: object | None = None
    key: str = ""

    def decode(self, ids) -> str:
        """Token ids back to text."""
        ids = [int(i) for i in ids]
        if self.tokenizer is None:
            return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")
        return self.tokenizer.decode(ids)

    def blocks(self, split: str, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, targets)`` of ``split``: ``[N, seq_len]`` int64 each, targets = inputs shifted by one."""
        ids = self.ids[split]
        n = (len(ids) - 1) // seq_len
        if n < 1:
            raise ConfigError(f"seq_len={seq_len} is longer than the {split} split ({len(ids)} tokens); "
                              f"pass a smaller seq_len")
        t = torch.from_numpy(ids[: n * seq_len + 1].astype(np.int64))
        x = t[:-1].view(n, seq_len)
        y = t[1:].view(n, seq_len)
        return x.contiguous(), y.contiguous()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_text(corpus: str = "python-docs", *, data_dir: str | None = None, vocab_size: int = 4096,
              tokenizer: str = "bpe", val_fraction: float = 0.05, test_fraction: float = 0.1,
              cache: bool = True) -> TextCorpus:
    """Read, split and tokenize a corpus (cached). ``corpus`` is a name of :data:`CORPORA` or a folder of
    ``.txt`` files; ``data_dir`` overrides the named corpus's folder."""
    if tokenizer not in ("bpe", "byte"):
        raise ConfigError(f"tokenizer={tokenizer!r} must be 'bpe' (byte-level BPE trained on the training "
                          f"documents) or 'byte' (raw UTF-8 bytes)")
    if tokenizer == "bpe" and not (isinstance(vocab_size, int) and not isinstance(vocab_size, bool)
                                   and 257 <= vocab_size <= 1_000_000):
        raise ConfigError(f"vocab_size={vocab_size!r} must be an int from 257 (the 256 bytes and the "
                          f"end-of-document token) upwards, e.g. 4096")
    if corpus in CORPORA:
        folder, how = CORPORA[corpus]
        folder = data_dir or folder
        if not os.path.isdir(folder):
            raise DataError(f"text corpus {corpus!r} not found at {folder!r}: {how}")
        name = corpus
    elif os.path.isdir(corpus):
        folder, name = corpus, os.path.basename(os.path.normpath(corpus))
    else:
        raise ConfigError(f"text corpus {corpus!r} is neither a known corpus ({', '.join(CORPORA)}) nor a folder; "
                          f"use 'text:python-docs' or 'text:/path/to/folder/of/txt/files'")
    docs = read_documents(folder)
    split = split_documents(list(docs), val_fraction=val_fraction, test_fraction=test_fraction)
    h = hashlib.sha256()
    for n in sorted(docs):
        h.update(n.encode() + b"\0" + docs[n].encode("utf-8", errors="replace") + b"\0")
    h.update(json.dumps([tokenizer, vocab_size if tokenizer == "bpe" else 257, val_fraction, test_fraction]).encode())
    key = h.hexdigest()[:16]
    where = cache_dir() / "text" / f"{name}-{tokenizer}-{key}"
    tok = None
    if tokenizer == "bpe":
        tok_file = where / "tokenizer.json"
        if cache and tok_file.exists():
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(tok_file))
        else:
            tok = train_tokenizer((docs[n] for n in split["train"]), vocab_size)
            if cache:
                _atomic_write(tok_file, tok.to_str().encode())
        vocab = tok.get_vocab_size()
        eod = tok.token_to_id(EOD)
    else:
        vocab, eod = 257, 256
    ids = {}
    for s in _SPLITS:
        f = where / f"{s}.npy"
        if cache and f.exists():
            ids[s] = np.load(f)
            continue
        parts = []
        texts = [docs[n] for n in split[s]]
        if tok is not None:
            for enc in tok.encode_batch(texts):
                parts.append(np.asarray(enc.ids, dtype=np.int32))
                parts.append(np.asarray([eod], dtype=np.int32))
        else:
            for t in texts:
                parts.append(np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(np.int32))
                parts.append(np.asarray([eod], dtype=np.int32))
        ids[s] = np.concatenate(parts)
        if cache:
            buf = _npy_bytes(ids[s])
            _atomic_write(f, buf)
    log.info("text corpus %s: %s tokens (train/val/test), vocabulary %d", name,
             "/".join(str(len(ids[s])) for s in _SPLITS), vocab)
    return TextCorpus(name=name, ids=ids, vocab_size=vocab, documents=split, tokenizer_kind=tokenizer,
                      tokenizer=tok, key=key)


def _npy_bytes(a: np.ndarray) -> bytes:
    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()
