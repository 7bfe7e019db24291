"""Image data: built-in set, batch augmentation, batch streams, CIFAR-10 reader (spec §3.1, §8; §12.9)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from dartsnas.data.builtin import make_builtin_images
from dartsnas.data.cifar import load_cifar10
from dartsnas.data.images import (
    BUILTIN_MEAN,
    BUILTIN_STD,
    CIFAR_MEAN,
    CIFAR_STD,
    BatchStream,
    augment,
    default_data_dir,
    load_images,
)
from dartsnas.errors import DataError

try:
    from conftest import shared_data_root
except ImportError:  # pragma: no cover - run from another rootdir

    def shared_data_root():
        return None

# ------------------------------------------------------------------------------------------- built-in


def test_builtin_is_deterministic_and_balanced():
    a = make_builtin_images()
    b = make_builtin_images()
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    tx, ty, vx, vy = a
    assert tx.dtype == torch.uint8 and tx.shape == (2048, 3, 16, 16) and vx.shape == (512, 3, 16, 16)
    assert ty.dtype == torch.int64 and ty.shape == (2048,) and vy.shape == (512,)
    for y, n in ((ty, 2048), (vy, 512)):
        counts = torch.bincount(y, minlength=10)
        assert counts.sum() == n and len(counts) == 10
        assert counts.max() - counts.min() <= 1
    c = make_builtin_images(seed=1)
    assert not torch.equal(c[0], tx)
    assert tx.float().std() > 10  # not a constant image


def test_load_images_builtin():
    d = load_images("builtin")
    assert d.num_classes == 10 and d.image_size == 16
    assert d.mean == BUILTIN_MEAN and d.std == BUILTIN_STD
    with pytest.raises(DataError):
        load_images("mnist")


# -------------------------------------------------------------------------------------------- augment


def test_cifar_normalisation_constants_are_the_spec_values():
    assert CIFAR_MEAN == (0.49139968, 0.48215827, 0.44653124)
    assert CIFAR_STD == (0.24703233, 0.24348505, 0.26158768)


def _batch(B=8, H=32, seed=0):
    return torch.randint(0, 256, (B, 3, H, H), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _normalise(x):
    m = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    s = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return (x.double() / 255.0 - m.double()) / s.double()


def test_eval_mode_is_normalisation_only():
    x = _batch()
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    out = augment(x, gen, CIFAR_MEAN, CIFAR_STD, cutout=16, train=False)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out.double(), _normalise(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(gen.get_state(), state), "eval mode must not draw random numbers"
    assert torch.equal(augment(x, None, CIFAR_MEAN, CIFAR_STD, train=False), out)


def test_train_mode_shape_and_determinism():
    x = _batch(16)
    outs = [augment(x, torch.Generator().manual_seed(7), CIFAR_MEAN, CIFAR_STD, cutout=16) for _ in range(2)]
    assert outs[0].shape == (16, 3, 32, 32) and outs[0].dtype == torch.float32
    assert torch.equal(outs[0], outs[1])
    other = augment(x, torch.Generator().manual_seed(8), CIFAR_MEAN, CIFAR_STD, cutout=16)
    assert not torch.equal(outs[0], other)
    # Continuing a generator gives fresh draws; a restored state repeats them.
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    first = augment(x, gen, CIFAR_MEAN, CIFAR_STD)
    second = augment(x, gen, CIFAR_MEAN, CIFAR_STD)
    assert not torch.equal(first, second)
    gen.set_state(state)
    assert torch.equal(augment(x, gen, CIFAR_MEAN, CIFAR_STD), first)


def test_crop_is_a_window_of_the_zero_padded_image():
    x = _batch(16)
    out = augment(x, torch.Generator().manual_seed(1), CIFAR_MEAN, CIFAR_STD, pad=4, flip=False).double()
    padded = _normalise(torch.nn.functional.pad(x, (4, 4, 4, 4)))  # raw zero padding, then normalised
    offsets = set()
    for b in range(16):
        hits = [
            (oy, ox)
            for oy in range(9)
            for ox in range(9)
            if torch.allclose(out[b], padded[b, :, oy : oy + 32, ox : ox + 32], atol=1e-5)
        ]
        assert len(hits) == 1, f"image {b}: {hits}"
        offsets.add(hits[0])
    assert len(offsets) > 3  # the offsets really vary


def test_flip_is_horizontal_and_random():
    x = _batch(64)
    out = augment(x, torch.Generator().manual_seed(2), CIFAR_MEAN, CIFAR_STD, pad=0, flip=True).double()
    plain = _normalise(x)
    flipped = 0
    for b in range(64):
        same = torch.allclose(out[b], plain[b], atol=1e-5)
        flip = torch.allclose(out[b], plain[b].flip(-1), atol=1e-5)
        assert same != flip
        flipped += flip
    assert 15 < flipped < 49  # p = 0.5
    no_aug = augment(x, torch.Generator().manual_seed(2), CIFAR_MEAN, CIFAR_STD, pad=0, flip=False)
    torch.testing.assert_close(no_aug.double(), plain, rtol=1e-5, atol=1e-5)


def test_cutout_zeroes_at_most_16x16_pixels():
    x = torch.full((256, 3, 32, 32), 255, dtype=torch.uint8)  # normalised value is nowhere 0
    out = augment(x, torch.Generator().manual_seed(4), CIFAR_MEAN, CIFAR_STD, pad=0, flip=False, cutout=16)
    zero = out == 0
    assert torch.equal(zero[:, 0], zero[:, 1]) and torch.equal(zero[:, 0], zero[:, 2])
    counts = zero[:, 0].flatten(1).sum(1)
    assert counts.max() <= 256
    assert (counts == 256).any()  # a hole fully inside
    assert (counts < 256).any()  # and holes clipped at the border
    for b in range(256):
        ys, xs = torch.nonzero(zero[b, 0], as_tuple=True)
        if len(ys):
            h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
            assert h <= 16 and w <= 16 and h * w == len(ys), "the hole is one rectangle"
    assert not torch.equal(out[~zero], torch.zeros(0)) and (out[~zero] != 0).all()


# --------------------------------------------------------------------------------------- batch streams


def test_epoch_mode_covers_every_index_once_with_a_short_last_batch():
    s = BatchStream(25_000, 64, seed=1, epoch_mode=True)
    assert s.steps_per_epoch() == 391
    for epoch in range(2):
        if epoch:
            s.new_epoch()
        batches = [s.next() for _ in range(391)]
        assert [len(b) for b in batches[:-1]] == [64] * 390 and len(batches[-1]) == 40
        allidx = torch.cat(batches)
        assert torch.equal(allidx.sort().values, torch.arange(25_000))
        assert not torch.equal(allidx, torch.arange(25_000))  # shuffled
        if epoch == 0:
            first = allidx
    assert not torch.equal(first, allidx)  # a new order each epoch


def test_endless_mode_gives_full_batches():
    s = BatchStream(1000, 64, seed=2, epoch_mode=False)
    seen = []
    for _ in range(100):
        b = s.next()
        assert len(b) == 64 and b.min() >= 0 and b.max() < 1000
        assert len(set(b.tolist())) == 64
        seen.append(b)
    assert len(set(torch.cat(seen).tolist())) == 1000


@pytest.mark.parametrize("epoch_mode", [True, False])
def test_stream_state_continues_identically(epoch_mode, tmp_path):
    s = BatchStream(300, 64, seed=5, epoch_mode=epoch_mode)
    for _ in range(3):
        s.next()
    state = s.state_dict()
    torch.save(state, tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)

    def run(stream, n=12):
        out = []
        for _ in range(n):
            if epoch_mode and stream.pos >= stream.num:
                stream.new_epoch()
            out.append(stream.next().tolist())
        return out

    expected = run(s)
    t = BatchStream(300, 64, seed=99, epoch_mode=epoch_mode)
    t.next()
    t.load_state_dict(state)
    assert run(t) == expected


def test_stream_batch_larger_than_data():
    s = BatchStream(10, 64, seed=0, epoch_mode=False)
    assert sorted(s.next().tolist()) == list(range(10))
    with pytest.raises(DataError):
        BatchStream(0, 64, seed=0, epoch_mode=True)


# ---------------------------------------------------------------------------------------- CIFAR files


def _real_cifar_root() -> Path | None:
    root = shared_data_root()
    if root is None or not (root / "cifar10" / "cifar-10-batches-py" / "data_batch_1").is_file():
        return None
    return root


@pytest.fixture(scope="module")
def real_cifar():
    root = _real_cifar_root()
    if root is None:
        pytest.skip("CIFAR-10 python batches not found under $DARTSNAS_DATA or ../shared/data")
    mp = pytest.MonkeyPatch()
    mp.setenv("DARTSNAS_DATA", str(root))  # load through the environment variable, no data_dir
    try:
        yield load_images("cifar10")
    finally:
        mp.undo()


def test_real_cifar_sizes_and_first_labels(real_cifar):
    d = real_cifar
    assert d.train_x.shape == (50_000, 3, 32, 32) and d.train_x.dtype == torch.uint8
    assert d.test_x.shape == (10_000, 3, 32, 32) and d.test_y.shape == (10_000,)
    assert d.train_y[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert torch.bincount(d.train_y).tolist() == [5000] * 10
    assert torch.bincount(d.test_y).tolist() == [1000] * 10
    assert d.mean == CIFAR_MEAN and d.std == CIFAR_STD


def test_real_cifar_search_split_is_25000_25000_by_index(real_cifar):
    from dartsnas.loops.search import SearchConfig, _State

    cfg = SearchConfig(init_channels=2, layers=3, num_nodes=2)
    assert cfg.train_portion == 0.5
    st = _State(cfg, real_cifar, torch.device("cpu"))
    assert torch.equal(st.w_idx, torch.arange(0, 25_000))
    assert torch.equal(st.a_idx, torch.arange(25_000, 50_000))
    assert st.train_stream.steps_per_epoch() == 391


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("DARTSNAS_DATA", str(tmp_path))
    assert default_data_dir("cifar10") == tmp_path  # the root; the loader finds cifar10/cifar-10-batches-py in it
    with pytest.raises(DataError) as info:
        load_images("cifar10")  # nothing there
    assert str(tmp_path / "cifar10" / "cifar-10-batches-py") in str(info.value)
    monkeypatch.delenv("DARTSNAS_DATA")
    assert default_data_dir("cifar10") is None
    with pytest.raises(DataError):
        load_images("cifar10")


def _write_batch(path: Path, n: int = 10_000, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    d = {
        b"batch_label": b"synthetic",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"labels": rng.integers(0, 10, n).tolist(),
        b"filenames": [b"x"] * n,
    }
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)


@pytest.fixture(scope="module")
def good_batch(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cifar_good") / "batch"
    _write_batch(path)
    return path


def _folder(
    tmp_path: Path, good: Path, bad_name: str | None = None, bad_bytes: bytes | None = None, omit: str | None = None
) -> Path:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        if name == omit:
            continue
        if name == bad_name:
            (folder / name).write_bytes(bad_bytes)
        else:
            (folder / name).symlink_to(good)
    return folder


def test_synthetic_folder_loads(tmp_path, good_batch):
    tx, ty, vx, vy = load_cifar10(_folder(tmp_path, good_batch))
    assert tx.shape == (50_000, 3, 32, 32) and vx.shape == (10_000, 3, 32, 32)
    # row layout: 1024 red, then green, then blue values, each row-major
    with open(good_batch, "rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"]
    assert tx[0, 0, 0, 1].item() == raw[0, 1] and tx[0, 1, 0, 0].item() == raw[0, 1024]
    assert tx[0, 2, 31, 31].item() == raw[0, 3071] and tx[0, 0, 1, 0].item() == raw[0, 32]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_batches_pickled_by_python3_load(tmp_path, protocol):
    from dartsnas.data.cifar import _read_batch

    data = np.arange(4 * 3072, dtype=np.int64).astype(np.uint8).reshape(4, 3072)
    for keys in ((b"data", b"labels"), ("data", "labels")):
        path = tmp_path / f"b{protocol}"
        path.write_bytes(pickle.dumps({keys[0]: data, keys[1]: [1, 2, 3, 9]}, protocol=protocol))
        x, y = _read_batch(path, expected=4)
        assert np.array_equal(x, data) and y.tolist() == [1, 2, 3, 9]


def _expect_data_error(folder: Path, file: str, *words: str) -> DataError:
    with pytest.raises(DataError) as info:
        load_cifar10(folder)
    msg = str(info.value)
    assert str(folder / file) in msg, msg
    for w in words:
        assert w in msg, msg
    assert info.value.exit_code != 0
    return info.value


def test_missing_batch(tmp_path, good_batch):
    _expect_data_error(_folder(tmp_path, good_batch, omit="data_batch_4"), "data_batch_4", "missing")


def test_missing_test_batch(tmp_path, good_batch):
    _expect_data_error(_folder(tmp_path, good_batch, omit="test_batch"), "test_batch")


def test_wrong_number_of_images(tmp_path, good_batch):
    bad = tmp_path / "short"
    _write_batch(bad, n=9_999)
    folder = _folder(tmp_path, good_batch, "data_batch_2", bad.read_bytes())
    _expect_data_error(folder, "data_batch_2", "10000", "9999")


def test_not_a_pickle(tmp_path, good_batch):
    folder = _folder(tmp_path, good_batch, "data_batch_1", b"this is not a pickle\n" * 10)
    _expect_data_error(folder, "data_batch_1")


def test_pickle_of_the_wrong_shape(tmp_path, good_batch):
    bad = pickle.dumps({b"data": np.zeros((10_000, 1024), dtype=np.uint8), b"labels": [0] * 10_000}, protocol=2)
    _expect_data_error(_folder(tmp_path, good_batch, "data_batch_3", bad), "data_batch_3")
    (tmp_path / "x").mkdir()
    bad = pickle.dumps([1, 2, 3], protocol=2)
    _expect_data_error(_folder(tmp_path / "x", good_batch, "data_batch_1", bad), "data_batch_1")


@pytest.mark.parametrize(
    "labels",
    [["cat"] * 4, [None] * 4, {"a": 1}, [[1, 2]] * 4, [1.5] * 4, [0, 1, 2, 10], [0, 1, 2], [[1], [2, 3], [4], [5]]],
)
def test_bad_labels_are_a_data_error(tmp_path, labels):
    from dartsnas.data.cifar import _read_batch

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": labels}, protocol=2))
    with pytest.raises(DataError) as info:
        _read_batch(path, expected=4)
    assert str(path) in str(info.value)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


class _EvilSystem:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_code_running_pickle_is_refused_and_not_run(tmp_path, good_batch):
    marker = tmp_path / "pwned"
    bad = pickle.dumps({b"data": _Evil(marker), b"labels": [0] * 10_000}, protocol=2)
    _expect_data_error(_folder(tmp_path, good_batch, "data_batch_5", bad), "data_batch_5", "refusing")
    assert not marker.exists()

    marker2 = tmp_path / "pwned2"
    bad = pickle.dumps(_EvilSystem(marker2), protocol=2)
    (tmp_path / "y").mkdir()
    _expect_data_error(_folder(tmp_path / "y", good_batch, "data_batch_1", bad), "data_batch_1")
    assert not marker2.exists()


def test_no_such_folder(tmp_path):
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path / "absent")
    assert str(tmp_path / "absent") in str(info.value) and "--data-dir" in str(info.value)


def test_a_data_root_finds_the_batches_in_each_layout(tmp_path, good_batch, monkeypatch):
    """``--data-dir``/``$DARTSNAS_DATA``: the batch folder, or a root holding cifar-10-batches-py/ or
    cifar10/cifar-10-batches-py/ (the README's data root); one search (``find_cifar_batches``) for all."""
    from dartsnas.data.cifar import find_cifar_batches

    (tmp_path / "root" / "cifar10").mkdir(parents=True)
    batches = _folder(tmp_path / "root" / "cifar10", good_batch)
    (tmp_path / "flat").mkdir()
    flat = _folder(tmp_path / "flat", good_batch)
    for given, found in (
        (batches, batches),
        (tmp_path / "root", batches),
        (tmp_path / "root" / "cifar10", batches),
        (tmp_path / "flat", flat),
    ):
        assert find_cifar_batches(given) == found
    tx, _, vx, _ = load_cifar10(tmp_path / "root")
    assert tx.shape == (50_000, 3, 32, 32) and vx.shape == (10_000, 3, 32, 32)
    monkeypatch.setenv("DARTSNAS_DATA", str(tmp_path / "root"))
    assert load_images("cifar10").test_x.shape == (10_000, 3, 32, 32)
    # a folder holding none of them: the error names every place looked in, and --data-dir
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as info:
        load_images("cifar10", tmp_path / "empty")
    msg = str(info.value)
    for place in ("empty", "empty/cifar-10-batches-py", "empty/cifar10/cifar-10-batches-py"):
        assert str(tmp_path / place) in msg, msg
    assert "--data-dir" in msg and info.value.exit_code == 4


def test_configs_store_the_data_folder_absolute(tmp_path, monkeypatch):
    """A relative data folder is stored absolute (config.json works from any working directory), and a
    checkpoint of an older run holding the relative spelling resumes without a config difference."""
    from dartsnas.loops.common import check_resume_config
    from dartsnas.loops.rnn_search import RNNSearchConfig
    from dartsnas.loops.rnn_train import RNNTrainConfig
    from dartsnas.loops.search import SearchConfig
    from dartsnas.loops.train import TrainConfig
    from dartsnas.protocol.compare import CompareConfig
    from dartsnas.protocol.config import ProtocolConfig

    monkeypatch.chdir(tmp_path)
    for cls in (SearchConfig, TrainConfig, RNNSearchConfig, RNNTrainConfig, ProtocolConfig, CompareConfig):
        assert cls.build(overrides=["data_dir=data/x"]).data_dir == str(tmp_path / "data" / "x"), cls
        assert cls.build().data_dir is None
    cfg = SearchConfig.build("tiny", dataset="cifar10", data_dir="data/x")
    assert cfg.data_dir == str(tmp_path / "data" / "x")
    old = {**cfg.to_dict(), "data_dir": "data/x"}  # what an older run's checkpoint holds
    notes: list[str] = []
    check_resume_config(cfg, {"config": old}, tmp_path / "checkpoint.pt", log=notes.append)
    assert notes == []


def test_small_tensors_reach_the_device_without_a_blocking_copy():
    import torch

    from dartsnas.data.images import _channel_constants, to_device

    t = torch.arange(4)
    assert to_device(t, torch.device("cpu")) is t  # CPU: no copy at all
    a = _channel_constants((0.5, 0.25, 0.125), torch.device("cpu"))
    assert a is _channel_constants((0.5, 0.25, 0.125), torch.device("cpu"))  # made once, not per batch
    assert a.shape == (1, 3, 1, 1) and a.flatten().tolist() == [0.5, 0.25, 0.125]
    if torch.cuda.is_available():  # on a GPU the copy goes through pinned memory and is asynchronous
        moved = to_device(t, torch.device("cuda"))
        assert moved.is_cuda and moved.cpu().tolist() == [0, 1, 2, 3]
