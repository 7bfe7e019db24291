"""Word-level corpora (spec §8): vocabulary rule, batchify, segments, the built-in corpus, the real files."""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path

import pytest
import torch

from dartsnas.data.text import EOS, batchify, builtin_text, corpus_dir, get_segment, load_corpus
from dartsnas.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def _data_root() -> Path:
    env = os.environ.get("DARTSNAS_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def _corpus_or_skip(name: str, folder: str):
    root = _data_root()
    if not (root / folder / "train.txt").is_file():
        pytest.skip(f"{root / folder} is absent (set DARTSNAS_DATA to the shared data root)")
    return load_corpus(name, root)


# ------------------------------------------------------------------------------------------ batching


def test_batchify_shapes_and_columns():
    data = torch.arange(103)
    b = batchify(data, 10)
    assert b.shape == (10, 10) and b.dtype == torch.long
    assert b[:, 0].tolist() == list(range(10))  # column 0 is the first contiguous stream
    assert b[0, 1].item() == 10  # column 1 starts where column 0 ends
    assert batchify(data, 1).shape == (103, 1)
    with pytest.raises(DataError):
        batchify(torch.arange(5), 4)  # fewer than 2 rows


def test_get_segment_shift_and_shrink():
    src = batchify(torch.arange(40), 4)  # 10 × 4
    x, y = get_segment(src, 0, 3)
    assert x.shape == y.shape == (3, 4)
    assert torch.equal(y, src[1:4]) and torch.equal(x, src[0:3])
    x, y = get_segment(src, 7, 5)  # shrinks: only rows 7, 8 have a next row
    assert x.shape == (2, 4) and torch.equal(y, src[8:10])
    with pytest.raises(DataError):
        get_segment(src, 9, 5)


# ------------------------------------------------------------------------------------------ vocabulary


def _write(folder: Path, train: str, valid: str, test: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("train", train), ("valid", valid), ("test", test)):
        (folder / f"{name}.txt").write_text(text, encoding="utf-8")


def test_vocabulary_order_and_eos(tmp_path):
    _write(tmp_path / "penn", " a b a \n c\n", " d a\n", " b e \n")
    c = load_corpus("ptb", tmp_path)  # the root: penn/ is found inside
    assert c.vocab == ["a", "b", EOS, "c", "d", "e"]  # first appearance over train, valid, test
    assert c.train.tolist() == [0, 1, 0, 2, 3, 2]
    assert c.valid.tolist() == [4, 0, 2] and c.test.tolist() == [1, 5, 2]
    c2 = load_corpus("ptb", tmp_path / "penn")  # the corpus folder itself
    assert c2.vocab == c.vocab and torch.equal(c2.test, c.test)


def test_given_vocabulary(tmp_path):
    _write(tmp_path, "a b\n", "b\n", "a\n")
    c = load_corpus("ptb", tmp_path, vocab=["b", "a", EOS, "zz"])
    assert c.train.tolist() == [1, 0, 2] and c.ntoken == 4
    with pytest.raises(DataError, match="words absent from the vocabulary"):
        load_corpus("ptb", tmp_path, vocab=["a", EOS])


def test_missing_file_named(tmp_path):
    _write(tmp_path / "wikitext-2", "a\n", "a\n", "a\n")
    (tmp_path / "wikitext-2" / "valid.txt").unlink()
    with pytest.raises(DataError) as e:
        load_corpus("wikitext2", tmp_path)
    assert str(tmp_path / "wikitext-2" / "valid.txt") in str(e.value)
    with pytest.raises(DataError, match="no such folder"):
        load_corpus("ptb", tmp_path / "nowhere")
    with pytest.raises(DataError, match="unknown corpus"):
        load_corpus("imdb", tmp_path)


def test_env_var(tmp_path, monkeypatch):
    _write(tmp_path / "penn", "x y\n", "y\n", "x\n")
    monkeypatch.setenv("DARTSNAS_DATA", str(tmp_path))
    assert corpus_dir("ptb") == tmp_path / "penn"
    assert load_corpus("ptb").vocab == ["x", "y", EOS]
    monkeypatch.delenv("DARTSNAS_DATA")
    with pytest.raises(DataError, match="DARTSNAS_DATA"):
        load_corpus("ptb")


# ------------------------------------------------------------------------------------------ built-in


def test_builtin_deterministic_and_sized():
    a, b = load_corpus("builtin"), load_corpus("builtin")
    assert a.vocab == b.vocab and torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert 200 <= a.ntoken <= 500
    assert 50_000 <= a.train.numel() < 50_100 and 5_000 <= a.valid.numel() < 5_100
    assert builtin_text(seed=1)[0][1][:5] != builtin_text(seed=0)[0][1][:5]


def test_builtin_is_learnable():
    """A smoothed bigram model fitted on train beats the uniform model on valid by a wide margin."""
    c = load_corpus("builtin")
    V = c.ntoken
    tr = c.train.tolist()
    big, uni = Counter(zip(tr[:-1], tr[1:])), Counter(tr[:-1])
    va = c.valid.tolist()
    nll = -sum(math.log((big[(p, q)] + 0.1) / (uni[p] + 0.1 * V)) for p, q in zip(va[:-1], va[1:])) / (len(va) - 1)
    assert math.exp(nll) < V / 5


# ------------------------------------------------------------------------------------------ real files


def test_ptb_counts_and_shapes():
    c = _corpus_or_skip("ptb", "penn")
    assert (c.train.numel(), c.valid.numel(), c.test.numel()) == (929_589, 73_760, 82_430)
    assert c.ntoken == 10_000 and c.vocab.index(EOS) >= 0 and "<unk>" in c.word2idx
    assert batchify(c.train, 256).shape == (3631, 256)
    assert batchify(c.train, 64).shape == (14524, 64)
    assert batchify(c.valid, 256).shape == (288, 256)
    assert batchify(c.valid, 10).shape == (7376, 10)
    assert batchify(c.test, 1).shape == (82430, 1)


def test_wikitext2_counts_and_shapes():
    c = _corpus_or_skip("wikitext2", "wikitext-2")
    assert (c.train.numel(), c.valid.numel(), c.test.numel()) == (2_088_628, 217_646, 245_569)
    assert c.ntoken == 33_278
    assert batchify(c.train, 64).shape == (32634, 64)
    assert batchify(c.valid, 10).shape == (21764, 10)
    assert batchify(c.test, 1).shape == (245569, 1)
