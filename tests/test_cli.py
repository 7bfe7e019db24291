"""The ``dartsnas`` CLI called in-process (``dartsnas.cli.main(argv) -> exit code``): bad input is one line and
its own exit code, ``--data-dir`` alone infers the dataset or stops, failed starts leave no folder behind, the
first-class flags and ``--show-config``, the thread choice, ``derive`` and ``--resume`` of the wrong kind of run.

Subprocesses stay for signals, exit codes of real processes and resume (test_search, test_train, test_protocol).
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from dartsnas.cli import COMMAND_MODULES, main


def run(capsys, *argv):
    """(exit code, stdout, stderr) of one in-process command line."""
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "argv, code, needle",
    [
        (["search", "--bogus"], 2, "unrecognized arguments"),
        (["search", "--preset", "tiny", "--set", "layres=4"], 2, "did you mean 'layers'"),
        (["search", "--preset", "tiny", "--layers", "two"], 2, "layers: expected an integer"),
        (["search", "--space", "rnn", "--preset", "tiny", "--layers", "3"], 2, "--layers is for image search"),
        (["train", "--preset", "tiny", "--lr", "-1"], 2, "lr"),
        (["train", "--space", "rnn", "--preset", "tiny", "--init-channels", "8"], 2, "--init-channels is for image"),
        (["select", "--preset", "nope"], 2, "unknown preset"),
        (["select", "--preset", "tiny", "--set", "jobs=0"], 2, "jobs: must be positive"),
        (["select", "--preset", "tiny", "--launcher", "pbs"], 2, "invalid choice"),
        (["random", "--resume"], 2, "--resume needs --experiment"),
        (["evaluate-final", "--preset", "tiny"], 2, "give --genotype"),
        (["report"], 2, "the following arguments are required"),
        (["derive", "/nonexistent/run"], 5, "no such checkpoint"),
        (["eval", "/nonexistent/run"], 5, "no such checkpoint"),
        (["genotype", "NOT_A_GENOTYPE"], 3, "not a published genotype name"),
        (["search", "--data-dir", "/nonexistent/data"], 4, "no such folder"),
        # non-positive numbers are refused by the option's type, naming the option
        (["eval", "/nonexistent/run", "--batch-size", "0"], 2, "--batch-size: must be a positive integer, got 0"),
        (["eval", "/nonexistent/run", "--batch-size", "-3"], 2, "--batch-size: must be a positive integer"),
        (["search", "--preset", "tiny", "--threads", "0"], 2, "--threads: must be a positive integer"),
        (["select", "--preset", "tiny", "--threads", "0"], 2, "--threads: must be a positive integer"),
        (["train", "--preset", "tiny", "--threads", "x"], 2, "--threads: expected a positive integer"),
        (["export", "r", "--format", "torchscript", "--out", "m", "--image-size", "0"], 2, "--image-size: must be"),
        (["export", "r", "--format", "torchscript", "--out", "m", "--seq-len", "0"], 2, "--seq-len: must be"),
        # no prefix abbreviations: --epoch is not silently --epochs
        (["train", "--preset", "tiny", "--epoch", "1"], 2, "unrecognized arguments: --epoch 1"),
        (["select", "--preset", "tiny", "--search", "1"], 2, "unrecognized arguments: --search 1"),
    ],
)
def test_bad_input_is_one_line(capsys, argv, code, needle):
    got, _, err = run(capsys, *argv)
    assert got == code, err
    assert needle in one_line(err)


def test_usage_errors_are_labelled_usage_errors(capsys):
    code, _, err = run(capsys, "train", "--bogus")
    assert code == 2 and one_line(err).startswith("dartsnas: usage error: dartsnas: unrecognized arguments: --bogus")
    code, _, err = run(capsys, "eval", "r", "--batch-size", "x")
    assert code == 2 and one_line(err).startswith("dartsnas: usage error: dartsnas eval: argument --batch-size")
    code, _, err = run(capsys, "train", "--preset", "tiny", "--set", "layres=4")  # a config error stays one
    assert code == 2 and one_line(err).startswith("dartsnas: config error:")


def test_output_folders_that_cannot_be_made_are_one_line(tmp_path, capsys):
    """report --out and genotype --svg: a file in the way, or a parent that cannot hold folders."""
    afile = tmp_path / "afile"
    afile.write_text("")
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "experiment.json").write_text(json.dumps({"kind": "select", "space": "cnn"}))
    for argv in (["report", str(exp), "--out"], ["genotype", "DARTS_V2", "--svg"]):
        for out in (afile, afile / "sub"):
            code, stdout, err = run(capsys, *argv, str(out))
            assert code == 7 and str(out) in one_line(err), (argv, out, err)
            assert stdout == ""
    assert afile.read_text() == ""
    code, _, _ = run(capsys, "report", str(exp), "--out", str(tmp_path / "rep"))
    assert code == 0 and (tmp_path / "rep" / "report.md").exists()


def test_help_and_version_return_zero(capsys):
    assert main(["--version"]) == 0 and "dartsnas" in capsys.readouterr().out
    assert main(["search", "--help"]) == 0 and "--init-channels" in capsys.readouterr().out
    assert main([]) == 2  # no command: the help, and a usage exit code


def test_every_command_module_is_loaded():
    import argparse

    from dartsnas.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert {"search", "derive", "train", "eval", "select", "random", "evaluate-final", "report", "genotype"} <= set(
        sub.choices
    )
    assert COMMAND_MODULES[:4] == ("search", "train", "protocol", "genotype")


def test_nothing_below_the_cli_imports_it():
    src = Path(__file__).resolve().parents[1] / "src" / "dartsnas"
    for path in src.rglob("*.py"):
        if path.parent.name == "cli" or path.name == "__main__.py":
            continue
        text = path.read_text()
        assert "from .cli" not in text and "from ..cli" not in text and "dartsnas.cli" not in text, path


# ------------------------------------------------------------------------------------------- --data-dir alone


def _cifar_batches(root: Path) -> Path:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        (d / name).write_bytes(b"not a pickle")  # inference looks at names; reading is the loader's job
    return d


def _corpus(d: Path) -> Path:
    d.mkdir(parents=True)
    for name in ("train.txt", "valid.txt", "test.txt"):
        (d / name).write_text("a b c\n")
    return d


def _resolved(capsys, *argv) -> tuple[dict, str]:
    code, out, err = run(capsys, *argv, "--show-config")
    assert code == 0, err
    return json.loads(out), err


def test_data_dir_infers_cifar10(tmp_path, capsys):
    _cifar_batches(tmp_path / "c")
    for folder in (tmp_path / "c", tmp_path / "c" / "cifar-10-batches-py"):
        for cmd in ("search", "train"):
            cfg, err = _resolved(capsys, cmd, "--data-dir", str(folder))
            assert cfg["dataset"] == "cifar10" and cfg["data_dir"] == str(tmp_path / "c" / "cifar-10-batches-py")
            assert "dataset: cifar10" in err
    npz = tmp_path / "subset.npz"
    np.savez(
        npz,
        train_data=np.zeros((2, 3072), np.uint8),
        train_labels=np.zeros(2, np.uint8),
        test_data=np.zeros((1, 3072), np.uint8),
        test_labels=np.zeros(1, np.uint8),
    )
    cfg, _ = _resolved(capsys, "search", "--data-dir", str(npz))
    assert cfg["dataset"] == "cifar10" and cfg["data_dir"] == str(npz)
    # the paper's settings stay (the preset is not the quick one on built-in data)
    assert cfg["epochs"] == 50 and cfg["layers"] == 8


def test_data_dir_infers_the_corpus_by_folder_name(tmp_path, capsys):
    _corpus(tmp_path / "root" / "penn")
    cfg, _ = _resolved(capsys, "search", "--space", "rnn", "--data-dir", str(tmp_path / "root"))
    assert cfg["dataset"] == "ptb" and cfg["data_dir"] == str(tmp_path / "root" / "penn")
    _corpus(tmp_path / "wikitext-2")
    cfg, _ = _resolved(capsys, "train", "--space", "rnn", "--data-dir", str(tmp_path / "wikitext-2"))
    assert cfg["dataset"] == "wikitext2" and cfg["nhid"] == 700  # the WikiText-2 preset
    _corpus(tmp_path / "root" / "wikitext-2")
    code, _, err = run(capsys, "search", "--space", "rnn", "--data-dir", str(tmp_path / "root"))
    assert code == 4 and "several datasets (ptb, wikitext2)" in one_line(err) and "--dataset" in err


def test_data_dir_that_holds_nothing_known_stops(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    for argv in (
        ["search"],
        ["train"],
        ["search", "--space", "rnn"],
        ["train", "--space", "rnn"],
        ["select", "--preset", "quick"],
    ):
        code, _, err = run(capsys, *argv, "--data-dir", str(tmp_path / "empty"))
        assert code == 4 and "cannot tell which dataset" in one_line(err) and "pass --dataset" in err
    _corpus(tmp_path / "mytext")
    code, _, err = run(capsys, "search", "--space", "rnn", "--data-dir", str(tmp_path / "mytext"))
    assert code == 4 and "neither ptb" in one_line(err)
    code, _, err = run(capsys, "search", "--data-dir", str(tmp_path / "mytext"))
    assert code == 4 and "--space rnn" in one_line(err)
    assert not (tmp_path / "runs").exists()  # nothing ran: never the built-in data in place of the folder


def test_imagenet_folder_is_inferred_for_training_only(tmp_path, capsys):
    (tmp_path / "in" / "train").mkdir(parents=True)
    (tmp_path / "in" / "val").mkdir()
    cfg, _ = _resolved(capsys, "train", "--data-dir", str(tmp_path / "in"))
    assert cfg["dataset"] == "imagenet" and cfg["layers"] == 14  # the ImageNet preset (spec §6)
    code, _, err = run(capsys, "search", "--data-dir", str(tmp_path / "in"))
    assert code == 4 and "imagenet" in one_line(err)


def test_protocol_data_dir_alone_infers_the_dataset(tmp_path, capsys):
    _cifar_batches(tmp_path)
    cfg, _ = _resolved(capsys, "select", "--preset", "quick", "--data-dir", str(tmp_path))
    assert cfg["dataset"] == "cifar10" and cfg["data_dir"] == str(tmp_path / "cifar-10-batches-py")


def _readable_cifar_root(root: Path) -> Path:
    """root/cifar10/cifar-10-batches-py with real-format batches (one random batch of 10,000 images, linked 6 times),
    the README's data-root layout."""
    import pickle

    d = root / "cifar10" / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batch = {b"data": rng.integers(0, 256, (10_000, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, 10_000)}
    (root / "one_batch").write_bytes(pickle.dumps({**batch, b"labels": batch[b"labels"].tolist()}, protocol=2))
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        (d / name).symlink_to(Path("..", "..", "one_batch"))  # relative: the tree can move
    return d


def test_data_root_with_an_explicit_dataset_and_runs_that_work_from_anywhere(tmp_path, capsys, monkeypatch):
    """--dataset cifar10 --data-dir ROOT (a folder holding cifar10/cifar-10-batches-py/) runs; the run's config
    stores the folder absolute, so eval works from another directory; a moved folder says to pass --data-dir."""
    _readable_cifar_root(tmp_path / "data")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.delenv("DARTSNAS_DATA", raising=False)
    for cmd in ("search", "train"):
        code, _, err = run(
            capsys, cmd, "--preset", "tiny", "--dataset", "cifar10", "--data-dir", "../data", "--run-dir", cmd
        )
        assert code == 0, err
        assert json.loads(Path(cmd, "config.json").read_text())["data_dir"] == str(tmp_path / "data")
    monkeypatch.chdir(tmp_path)  # another working directory: "../data" would now name nothing
    code, out, err = run(capsys, "eval", str(tmp_path / "work" / "train"))
    assert code == 0 and "test_error_percent" in out, err
    (tmp_path / "data").rename(tmp_path / "moved")
    code, _, err = run(capsys, "eval", str(tmp_path / "work" / "train"))
    assert code == 4 and str(tmp_path / "data") in one_line(err) and "--data-dir" in err
    code, out, err = run(capsys, "eval", str(tmp_path / "work" / "train"), "--data-dir", "moved")
    assert code == 0 and "test_error_percent" in out, err


# ------------------------------------------------------------------------------------------- flags, --show-config


def test_first_class_flags_and_show_config(capsys):
    cfg, _ = _resolved(capsys, "search", "--preset", "paper", "--layers", "5", "--init-channels", "12", "--lr", "0.1")
    assert (cfg["layers"], cfg["init_channels"], cfg["lr"]) == (5, 12, 0.1)
    cfg, _ = _resolved(capsys, "train", "--preset", "paper", "--layers", "8", "--init-channels", "16", "--lr", "0.05")
    assert (cfg["layers"], cfg["init_channels"], cfg["lr"], cfg["epochs"]) == (8, 16, 0.05, 600)
    cfg, _ = _resolved(capsys, "train", "--space", "rnn", "--preset", "tiny", "--lr", "7")
    assert cfg["lr"] == 7
    cfg, _ = _resolved(
        capsys,
        "select",
        "--preset",
        "quick",
        "--searches",
        "3",
        "--launcher",
        "slurm",
        "--slurm-partition",
        "gpu",
        "--slurm-gpus",
        "2",
        "--slurm-mem",
        "32",
    )
    assert (cfg["searches"], cfg["launcher"], cfg["slurm_partition"], cfg["slurm_gpus"], cfg["slurm_mem"]) == (
        3,
        "slurm",
        "gpu",
        2,
        32,
    )
    cfg, _ = _resolved(capsys, "random", "--preset", "tiny", "--samples", "5", "--threads", "2")
    assert cfg["samples"] == 5 and cfg["threads"] == 2
    cfg, _ = _resolved(capsys, "evaluate-final", "--preset", "tiny", "--genotype", "DARTS_V2", "--runs", "3")
    assert cfg["final_runs"] == 3


# ------------------------------------------------------------------------------------------- failed starts


def test_failed_starts_leave_no_run_directory(tmp_path, capsys, monkeypatch):
    """A bad device, truncated data or a bad genotype: the command created runs/<kind>-<time> and removes it."""
    monkeypatch.chdir(tmp_path)
    bad = _cifar_batches(tmp_path / "trunc")
    starts = [
        (["search", "--preset", "tiny", "--device", "cuda:7"], (2,)),
        (["search", "--preset", "tiny", "--dataset", "cifar10", "--data-dir", str(bad)], (4,)),
        (["train", "--preset", "tiny", "--genotype", str(tmp_path / "missing.json")], (3,)),
        (["train", "--preset", "tiny", "--dataset", "cifar10", "--data-dir", str(bad)], (4,)),
        (["search", "--space", "rnn", "--preset", "tiny", "--device", "cuda:7"], (2,)),
        (["train", "--space", "rnn", "--dataset", "ptb", "--data-dir", str(tmp_path / "trunc")], (4,)),
    ]
    import torch

    for argv, codes in starts:
        if "cuda:7" in argv and torch.cuda.device_count() > 7:
            continue
        code, _, err = run(capsys, *argv, "--no-progress")
        assert code in codes, (argv, err)
        one_line(err)
        assert not (tmp_path / "runs").exists(), (argv, list((tmp_path / "runs").iterdir()))
    # an explicit --run-dir the command created goes too; one that existed before stays
    code, _, _ = run(capsys, "search", "--preset", "tiny", "--device", "cuda:7", "--run-dir", str(tmp_path / "x/r"))
    assert code == 2 and not (tmp_path / "x").exists()
    (tmp_path / "mine").mkdir()
    run(capsys, "search", "--preset", "tiny", "--device", "cuda:7", "--run-dir", str(tmp_path / "mine"))
    assert (tmp_path / "mine").is_dir()


def test_protocol_checks_data_once_before_any_run(tmp_path, capsys):
    exp = tmp_path / "e"
    for cmd in (["select"], ["random"], ["evaluate-final", "--genotype", "DARTS_V2"]):
        code, _, err = run(
            capsys,
            *cmd,
            "--preset",
            "tiny",
            "--dataset",
            "cifar10",
            "--data-dir",
            str(tmp_path / "nope"),
            "--experiment",
            str(exp),
        )
        assert code == 4 and str(tmp_path / "nope") in one_line(err)
        assert not exp.exists()  # no experiment directory, no run started
    code, _, err = run(capsys, "select", "--preset", "tiny", "--search-set", "layres=3", "--experiment", str(exp))
    assert code == 2 and "layres" in one_line(err) and not exp.exists()


def _no_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def test_protocol_devices_that_do_not_exist_are_refused_up_front(tmp_path, capsys, monkeypatch):
    """--devices naming a GPU this machine lacks: one config error before the experiment exists (not runs
    recorded on cuda:0 that ran on the CPU)."""
    import torch

    exp = tmp_path / "e"
    n = torch.cuda.device_count()
    starts = (
        ["random", "--samples", "2"],
        ["select", "--searches", "1"],
        ["evaluate-final", "--genotype", "DARTS_V2"],
        ["compare", "--methods", "darts", "--seeds", "1"],
    )
    for cmd in starts:
        code, _, err = run(capsys, *cmd, "--preset", "tiny", "--devices", f"0,{n + 3}", "-e", str(exp))
        line = one_line(err)
        assert code == 2 and "config error: devices:" in line, (cmd, err)
        assert (f"no GPU {n + 3} here" if n else "CUDA is not available") in line
        assert not exp.exists()
    _no_cuda(monkeypatch)
    code, _, err = run(capsys, "random", "--preset", "tiny", "--samples", "2", "--devices", "0", "-e", str(exp))
    assert code == 2 and "GPU 0 requested but CUDA is not available" in one_line(err) and not exp.exists()


def test_protocol_refuses_a_run_device_it_cannot_give_before_creating_anything(tmp_path, capsys, monkeypatch):
    """A device in --search-set/--train-set that every run would fail on is a config error up front (exit 2),
    not N failed runs and the genotype-error exit code."""
    import torch

    exp = tmp_path / "e"
    base = ["--preset", "tiny", "-e", str(exp)]
    with monkeypatch.context() as m:  # a machine with CUDA, whose runs --devices cpu keeps on the CPU
        m.setattr(torch.cuda, "is_available", lambda: True)
        code, _, err = run(
            capsys, "select", *base, "--searches", "1", "--devices", "cpu", "--search-set", "device=cuda"
        )
    assert code == 2 and "run on the CPU (--devices cpu)" in one_line(err) and not exp.exists(), err
    _no_cuda(monkeypatch)
    for cmd in (["select", "--searches", "1", "--search-set"], ["random", "--samples", "1", "--train-set"]):
        code, _, err = run(capsys, *cmd, "device=cuda", *base)
        assert code == 2 and "'cuda' requested but CUDA is not available" in one_line(err), err
        assert not exp.exists()


def test_resume_of_a_missing_experiment_says_so_and_creates_nothing(tmp_path, capsys, monkeypatch):
    exp = tmp_path / "nothere"
    monkeypatch.delenv("DARTSNAS_DATA", raising=False)  # no data folder is needed to say there is no experiment
    starts = (["select"], ["random"], ["evaluate-final", "--genotype", "DARTS_V2"], ["compare"])
    for cmd in starts:
        code, _, err = run(capsys, *cmd, "--resume", "-e", str(exp))
        assert code == 7 and "nothing to resume: no experiment.json" in one_line(err), (cmd, err)
        assert not exp.exists()
    monkeypatch.setenv("DARTSNAS_DATA", str(tmp_path))
    code, _, err = run(capsys, "select", "--resume", "-e", str(exp))
    assert code == 7 and not exp.exists()  # no directory, no .lock left behind
    from dartsnas.errors import RunDirError
    from dartsnas.protocol import ProtocolConfig, select

    with pytest.raises(RunDirError, match="nothing to resume"):  # the library checks first too
        select(ProtocolConfig.build("tiny"), exp, resume=True)
    assert not exp.exists()


# ------------------------------------------------------------------------------------------- threads


def test_thread_rule(monkeypatch):
    from dartsnas import threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "cpu_cores", lambda: 16)
    assert threads.choose_threads(small=True)[0] == 1
    assert threads.choose_threads(small=False)[0] == 4
    assert threads.choose_threads(small=False, jobs=4)[0] == 4  # each run's share of the cores
    assert threads.choose_threads(small=False, jobs=8)[0] == 1  # 2 cores a run: one thread (measured)
    monkeypatch.setattr(threads, "cpu_cores", lambda: 2)
    assert threads.choose_threads(small=False)[0] == 1
    assert threads.choose_threads(small=True, explicit=3) == (3, "")  # the user's choice, not announced
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert threads.choose_threads(small=False) == (5, "")


def test_small_run_announces_one_thread(tmp_path, capsys, monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        code, out, err = run(
            capsys,
            "search",
            "--preset",
            "tiny",
            "--epochs",
            "1",
            "--no-progress",
            "--device",
            "cpu",
            "--run-dir",
            str(tmp_path / "r"),
        )
        assert code == 0, err
        assert err.count("threads: 1 (small run on the built-in data") == 1
        assert torch.get_num_threads() == 1
        # a finished run: --resume says so instead of starting anything
        code, out, err = run(capsys, "search", "--resume", str(tmp_path / "r"))
        assert code == 0 and "already complete" in out
        # derive on a search run prints the genotype
        code, out, err = run(capsys, "derive", str(tmp_path / "r"))
        assert code == 0 and json.loads(out)["normal"]
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------- derive, resume


def test_derive_on_a_training_run_names_the_mistake(tmp_path, capsys):
    from dartsnas.checkpoint import save_checkpoint

    run_dir = tmp_path / "train"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"kind": "cnn-train"}))
    save_checkpoint(run_dir / "checkpoint.pt", {"kind": "cnn-train", "config": {}})
    save_checkpoint(run_dir / "checkpoint.pt", {"kind": "cnn-train", "config": {}})  # and a .prev beside it
    assert (run_dir / "checkpoint.pt.prev").exists()
    code, _, err = run(capsys, "derive", str(run_dir))
    line = one_line(err)
    assert code == 5 and "cnn-train run, not a search" in line and ".prev" not in line


def test_eval_of_a_search_run_says_train_it_first(tmp_path, capsys):
    from dartsnas.checkpoint import save_checkpoint

    run_dir = tmp_path / "search"
    run_dir.mkdir()
    for _ in range(2):  # and a .prev beside it: not the advice for a run of another kind
        save_checkpoint(run_dir / "checkpoint.pt", {"kind": "cnn-search", "config": {}})
    code, _, err = run(capsys, "eval", str(run_dir))
    line = one_line(err)
    assert code == 5 and "is a search run (cnn-search)" in line and ".prev" not in line
    assert f"dartsnas train --genotype {run_dir / 'genotype.json'}" in line


def test_resume_of_a_finished_training_run_says_complete(tmp_path, capsys):
    from dartsnas.checkpoint import save_checkpoint
    from dartsnas.loops.train import TrainConfig

    run_dir = tmp_path / "t"
    run_dir.mkdir()
    cfg = TrainConfig.build("tiny").to_dict()
    (run_dir / "config.json").write_text(json.dumps({"kind": "cnn-train", **cfg}))
    save_checkpoint(run_dir / "checkpoint.pt", {"kind": "cnn-train", "config": cfg, "epoch": cfg["epochs"]})
    (run_dir / "results.json").write_text("{}")
    code, out, _ = run(capsys, "train", "--resume", str(run_dir))
    assert code == 0 and "already complete" in out
    assert sorted(os.listdir(run_dir)) == ["checkpoint.pt", "config.json", "results.json"]  # nothing started
    code, _, err = run(capsys, "train", "--resume", str(run_dir), "--set", "layers=4")
    assert code == 5 and "layers: checkpoint=3, config=4" in one_line(err)  # a changed config is still refused
