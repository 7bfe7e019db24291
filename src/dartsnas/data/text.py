"""Word-level corpora for the recurrent experiments (spec §8): PTB, WikiText-2 and a built-in corpus.

Vocabulary rule [CODE]: read train, then valid, then test; split each line on whitespace and append one
``<eos>``; each new word gets the next integer id, in order of first appearance across the three files.
With a *given* vocabulary (e.g. the one saved with a trained model) no word is added, and any word the
vocabulary lacks is reported as a ``DataError``.

``batchify`` cuts a token stream to a multiple of B and reshapes it into B contiguous columns (rows =
time, columns = streams); ``get_segment`` takes rows [i, i+ℓ) as input and [i+1, i+ℓ+1) as target.

The built-in corpus is generated deterministically in code (no files): sentences from a small
probabilistic grammar with topics, number agreement and Zipf-like word frequencies, about 400 words and
50,000 training tokens. A language model learns it well below the uniform perplexity within minutes on a
CPU; it says nothing about PTB perplexity.

Example::

    >>> c = load_corpus("builtin")
    >>> train = batchify(c.train, 32)          # (rows, 32)
    >>> x, y = get_segment(train, 0, 35)       # both (35, 32)
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import DataError

EOS = "<eos>"
CORPORA = ("ptb", "wikitext2", "builtin")
SPLITS = ("train", "valid", "test")
# Folder names accepted under a data root, first match wins.
CORPUS_FOLDERS = {"ptb": ("penn", "ptb", "PTB"), "wikitext2": ("wikitext-2", "wikitext2", "wt2")}


@dataclass
class Corpus:
    """Token-id streams (1-D int64) of the three splits and the vocabulary (``vocab[id] == word``)."""

    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    vocab: list[str]
    name: str = ""
    word2idx: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.word2idx:
            self.word2idx = {w: i for i, w in enumerate(self.vocab)}

    @property
    def ntoken(self) -> int:
        return len(self.vocab)


# ---------------------------------------------------------------------------------------------- reading


def _encode_lines(
    lines: Iterable[str], word2idx: dict[str, int], vocab: list[str], grow: bool, where: str
) -> torch.Tensor:
    ids: list[int] = []
    missing: dict[str, int] = {}
    for line in lines:
        for w in line.split() + [EOS]:
            i = word2idx.get(w)
            if i is None:
                if grow:
                    i = word2idx[w] = len(vocab)
                    vocab.append(w)
                else:
                    missing[w] = missing.get(w, 0) + 1
                    continue
            ids.append(i)
    if missing:
        examples = ", ".join(repr(w) for w in list(missing)[:5])
        raise DataError(
            f"{len(missing)} words absent from the vocabulary ({sum(missing.values())} tokens), "
            f"e.g. {examples}; the corpus does not match the vocabulary it is read with",
            where,
        )
    return torch.tensor(ids, dtype=torch.long)


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError("missing corpus file (expected train.txt, valid.txt and test.txt in this folder)", str(path))
    try:
        with open(path, encoding="utf-8") as f:  # line iteration, as the reference (not str.splitlines)
            return list(f)
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read: {e}", str(path)) from None


def encode_splits(
    splits: Sequence[tuple[str, list[str]]], vocab: Sequence[str] | None = None, name: str = ""
) -> Corpus:
    """Build a Corpus from (where, lines) for train, valid, test in that order (vocabulary rule above)."""
    grow = vocab is None
    vocab_list: list[str] = [] if vocab is None else list(vocab)
    word2idx = {w: i for i, w in enumerate(vocab_list)}
    if len(word2idx) != len(vocab_list):
        raise DataError("the given vocabulary has duplicate words", "vocab")
    streams = [_encode_lines(lines, word2idx, vocab_list, grow, where) for where, lines in splits]
    return Corpus(streams[0], streams[1], streams[2], vocab_list, name, word2idx)


def corpus_dir(name: str, data_dir: str | Path | None = None) -> Path:
    """The folder holding ``train.txt``/``valid.txt``/``test.txt`` for ``name``.

    ``data_dir`` (else ``$DARTSNAS_DATA``) may be that folder itself or a root with ``penn/`` and
    ``wikitext-2/`` inside.
    """
    if name not in CORPUS_FOLDERS:
        raise DataError(f"unknown corpus {name!r}; available: {', '.join(CORPORA)}", "dataset")
    if data_dir is None or str(data_dir) == "":
        env = os.environ.get("DARTSNAS_DATA")
        if not env:
            raise DataError(
                "no data folder given: pass --data-dir (the folder holding train.txt, valid.txt and "
                f"test.txt, or a root with {CORPUS_FOLDERS[name][0]}/ inside) or set DARTSNAS_DATA",
                name,
            )
        data_dir = env
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError("no such folder (pass --data-dir to point at the corpus)", str(root))
    if (root / "train.txt").is_file():
        return root
    for sub in CORPUS_FOLDERS[name]:
        if (root / sub).is_dir():
            return root / sub  # the file check names whatever is missing there
    return root  # neither the corpus folder nor a root holding it: the file check names root/train.txt


def load_corpus(name: str, data_dir: str | Path | None = None, vocab: Sequence[str] | None = None) -> Corpus:
    """Load ``"ptb"``, ``"wikitext2"`` or ``"builtin"``; with ``vocab``, read with that vocabulary."""
    if name == "builtin":
        return encode_splits(builtin_text(), vocab, name="builtin")
    folder = corpus_dir(name, data_dir)
    splits = [(str(folder / f"{s}.txt"), _read_lines(folder / f"{s}.txt")) for s in SPLITS]
    return encode_splits(splits, vocab, name=name)


# ---------------------------------------------------------------------------------------------- batching


def batchify(data: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cut ``data`` (1-D) to a multiple of B and return it as (len // B, B): column b is a contiguous stream."""
    if batch_size < 1:
        raise DataError(f"batch size must be positive, got {batch_size}", "batch_size")
    rows = data.numel() // batch_size
    if rows < 2:
        raise DataError(
            f"{data.numel()} tokens are too few for {batch_size} streams (need at least 2 rows)", "batch_size"
        )
    return data[: rows * batch_size].view(batch_size, rows).t().contiguous()


def get_segment(source: torch.Tensor, i: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input rows [i, i+ℓ) and target rows [i+1, i+ℓ+1), both (ℓ, B); ℓ shrinks at the end of ``source``."""
    seq_len = min(seq_len, source.size(0) - 1 - i)
    if seq_len < 1:
        raise DataError(f"no segment starts at row {i} of a source with {source.size(0)} rows", "segment")
    return source[i : i + seq_len], source[i + 1 : i + 1 + seq_len]


# ---------------------------------------------------------------------------------------------- built-in

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "st", "tr", "gl")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "n", "r", "l", "s", "m")


class _Rng:
    """Python's Mersenne Twister, used only through ``random()`` (stable across Python versions)."""

    def __init__(self, seed: int):
        self._r = random.Random(seed)

    def below(self, n: int) -> int:
        return min(int(self._r.random() * n), n - 1)

    def weighted(self, cum: list[float]) -> int:
        x = self._r.random() * cum[-1]
        lo, hi = 0, len(cum) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if cum[mid] > x:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def chance(self, p: float) -> bool:
        return self._r.random() < p


def _zipf_cum(n: int, s: float = 1.0) -> list[float]:
    cum, tot = [], 0.0
    for k in range(1, n + 1):
        tot += 1.0 / k**s
        cum.append(tot)
    return cum


def _make_words(rng: _Rng, count: int, taken: set[str], syllables: tuple[int, int] = (1, 3)) -> list[str]:
    words: list[str] = []
    while len(words) < count:
        k = syllables[0] + rng.below(syllables[1] - syllables[0] + 1)
        w = "".join(_ONSETS[rng.below(len(_ONSETS))] + _VOWELS[rng.below(len(_VOWELS))] for _ in range(k))
        w += _CODAS[rng.below(len(_CODAS))]
        if w not in taken:
            taken.add(w)
            words.append(w)
    return words


def builtin_text(
    seed: int = 0, train_tokens: int = 50_000, valid_tokens: int = 5_000, test_tokens: int = 5_000, num_topics: int = 8
) -> list[tuple[str, list[str]]]:
    """The built-in corpus as (where, lines) for train/valid/test; identical for identical arguments.

    Grammar: S → NP_subj VP [PP] [CONJ S'] with NP → DET [ADJ] NOUN and number agreement between subject
    and verb (plural nouns end in "s", singular verbs in "es"). Each sentence has a topic that selects
    its nouns, verbs and adjectives (Zipf-distributed within the topic), so words within a sentence
    predict each other.
    """
    rng = _Rng(seed)
    taken: set[str] = set()
    function = {
        "det_sg": ["the", "a", "this", "every", "one"],
        "det_pl": ["the", "these", "some", "many", "two"],
        "prep": ["in", "on", "near", "with", "under", "for", "by"],
        "conj": ["and", "but", "while", "because"],
        "adv": ["quickly", "rarely", "often", "never", "still"],
    }
    for ws in function.values():
        taken.update(ws)
    topics = []
    for _ in range(num_topics):
        nouns = _make_words(rng, 14, taken)
        verbs = _make_words(rng, 8, taken, (1, 2))
        adjs = _make_words(rng, 6, taken, (2, 3))
        topics.append((nouns, verbs, adjs))
    noun_cum, verb_cum, adj_cum = _zipf_cum(14), _zipf_cum(8), _zipf_cum(6)
    det_cum, prep_cum = _zipf_cum(5, 0.7), _zipf_cum(7, 0.7)

    def noun_phrase(topic, plural: bool) -> list[str]:
        nouns, _, adjs = topic
        det = function["det_pl" if plural else "det_sg"][rng.weighted(det_cum)]
        words = [det]
        if rng.chance(0.4):
            words.append(adjs[rng.weighted(adj_cum)])
        noun = nouns[rng.weighted(noun_cum)]
        words.append(noun + "s" if plural else noun)
        return words

    def clause(topic) -> list[str]:
        plural = rng.chance(0.4)
        words = noun_phrase(topic, plural)
        if rng.chance(0.2):
            words.append(function["adv"][rng.below(5)])
        verb = topic[1][rng.weighted(verb_cum)]
        words.append(verb if plural else verb + "es")
        words += noun_phrase(topic, rng.chance(0.4))
        if rng.chance(0.5):
            words.append(function["prep"][rng.weighted(prep_cum)])
            words += noun_phrase(topic, rng.chance(0.4))
        return words

    def sentence() -> list[str]:
        topic = topics[rng.weighted(_zipf_cum(num_topics, 0.5))]
        words = clause(topic)
        if rng.chance(0.3):
            if rng.chance(0.2):  # occasional topic switch
                topic = topics[rng.below(num_topics)]
            words.append(function["conj"][rng.below(4)])
            words += clause(topic)
        return words

    out = []
    for split, target in zip(SPLITS, (train_tokens, valid_tokens, test_tokens)):
        lines: list[str] = []
        count = 0
        while count < target:
            words = sentence()
            lines.append(" " + " ".join(words))
            count += len(words) + 1
        out.append((f"builtin:{split}", lines))
    return out
