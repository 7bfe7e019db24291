"""The ImageNet (class-per-folder) data source under data-parallel training: each rank decodes only its slice of
every global batch (issue 11, item 4). torchvision is not needed: the source is given a stand-in dataset that
records which images are read."""

from __future__ import annotations

import torch

from dartsnas.data.images import BatchStream
from dartsnas.loops.train import _FolderData


class _Recording(torch.utils.data.Dataset):
    """Image i is a 1x1x1 tensor holding i, label i % 7; every read is recorded."""

    def __init__(self, n: int):
        self.n, self.read = n, []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        self.read.append(i)
        return torch.full((1, 1, 1), float(i)), i % 7


def _source(n: int) -> _FolderData:
    src = _FolderData.__new__(_FolderData)  # no folders: the dataset is put in by hand
    src.cfg = type("Cfg", (), {"workers": 0})()
    src.device = torch.device("cpu")
    src.train_set = _Recording(n)
    return src


def _slice(rank: int, world: int):  # the same rule as the training loop's local_slice
    def local(n: int) -> tuple[int, int]:
        per, extra = divmod(n, world)
        lo = rank * per + min(rank, extra)
        return lo, lo + per + (1 if rank < extra else 0)

    return local


def test_each_rank_decodes_only_its_slice_and_together_they_make_the_batch():
    n, batch, world = 23, 8, 3  # a short last batch of 7, split 3 + 2 + 2
    whole = _source(n)
    one = [x.reshape(-1).long() for x, _ in whole.train_batches(BatchStream(n, batch, 5, True), None, _slice(0, 1))]
    assert sorted(whole.train_set.read) == list(range(n))
    per_rank, reads = [], []
    for rank in range(world):
        src = _source(n)
        stream = BatchStream(n, batch, 5, True)  # every rank draws the same stream
        got = [(x.reshape(-1).long(), y) for x, y in src.train_batches(stream, None, _slice(rank, world))]
        assert stream.pos == n  # the stream advances by whole global batches on every rank
        per_rank.append(got)
        reads.append(sorted(src.train_set.read))
        assert sorted(src.train_set.read) == sorted(int(i) for x, _ in got for i in x)  # read only what it yields
    for b, full in enumerate(one):
        parts = [per_rank[r][b][0] for r in range(world)]
        assert torch.equal(torch.cat(parts), full)  # contiguous slices, in rank order
        for r in range(world):
            assert torch.equal(per_rank[r][b][1], per_rank[r][b][0] % 7)  # labels travel with their images
    assert sum(len(r) for r in reads) == n and len(set().union(*map(set, reads))) == n  # no image read twice
