import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("tokenizers")

from bayescale.errors import InputError  # noqa: E402
from bayescale.train import data  # noqa: E402


def _write_corpus(folder, n_files=12):
    folder.mkdir()
    rng = np.random.default_rng(0)
    words = ["the", "king", "queen", "lord", "and", "of", "thou", "art", "shall", "love",
             "night", "day", "sword", "crown", "Æther", "naïve", "—"]
    for i in range(n_files):
        text = "\n".join(" ".join(rng.choice(words, size=12)) for _ in range(200))
        (folder / f"doc{i:02d}.txt").write_text(text + "\n", encoding="utf-8")
    return folder


def test_tokenizer_round_trip_and_cache(tmp_path):
    from tokenizers import Tokenizer

    src = _write_corpus(tmp_path / "txt")
    c = data.load_corpus(str(src), vocab_size=300, cache=tmp_path / "cache")
    assert c.train.dtype == np.uint16 and c.val.size > 0
    assert c.name == "txt/bpe300"
    tok = Tokenizer.from_file(str(next((tmp_path / "cache").glob("*/tokenizer.json"))))
    s = "the naïve king — thou art Æther!\nNew words: xylophone 123"
    assert tok.decode(tok.encode(s).ids) == s
    # bytes per token come from the byte-level alphabet: one char per UTF-8 byte
    ids = np.asarray(tok.encode(s).ids)
    assert c.token_bytes[ids].sum() == len(s.encode("utf-8"))
    # second load hits the cache and gives the same tokens
    c2 = data.load_corpus(str(src), vocab_size=300, cache=tmp_path / "cache")
    np.testing.assert_array_equal(np.asarray(c.train), np.asarray(c2.train))


def test_default_split_is_whole_documents_without_overlap():
    docs = data.default_documents()
    names = [n for n, _ in docs]
    assert len(names) == len(set(names)) == 38 + 66
    train, val = data.split_documents(docs, set(data.DEFAULT_VAL_DOCS))
    tn, vn = {n for n, _ in train}, {n for n, _ in val}
    assert vn == set(data.DEFAULT_VAL_DOCS) and not tn & vn
    assert len(train) + len(val) == len(docs)
    # cleaned of markup
    text = dict(docs)["shakespeare/macbeth"]
    assert "**" not in text and "## " not in text and "First Witch" in text
    # no held-out line of a few words appears verbatim in the training text
    train_text = "\n".join(t for _, t in train)
    hamlet = dict(val)["shakespeare/hamlet"]
    assert "To be, or not to be" in hamlet and "To be, or not to be" not in train_text


def test_bin_folder_and_errors(tmp_path):
    d = tmp_path / "bins"
    d.mkdir()
    np.arange(1000, dtype=np.uint16).tofile(d / "train.bin")
    np.arange(100, dtype=np.uint16).tofile(d / "val.bin")
    c = data.load_corpus(str(d))
    assert c.vocab_size == 1000 and c.train.size == 1000 and c.token_bytes is None
    w = data.eval_windows(c.val, 8, 40)
    assert w.shape == (5, 9) and w[0, 0] == 0
    with pytest.raises(InputError, match="expected 'default'"):
        data.load_corpus(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no \.txt files"):
        data.load_corpus(str(tmp_path / "empty"))
