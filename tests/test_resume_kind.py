"""``--resume RUN`` follows the run's own kind (config.json): a recurrent run resumes without ``--space rnn``,
and a run of the other command is refused in one line naming the command that continues it."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from dartsnas.cli import main

    root = tmp_path_factory.mktemp("kinds")
    made = {}
    for name, args in {
        "rnn-search": ["search", "--space", "rnn", "--preset", "tiny", "--epochs", "1"],
        "rnn-train": ["train", "--space", "rnn", "--preset", "tiny", "--epochs", "1"],
        "cnn-train": ["train", "--preset", "tiny", "--epochs", "1"],
    }.items():
        made[name] = root / name
        assert main([*args, "--run-dir", str(made[name])]) == 0, name
    return made


@pytest.mark.parametrize("kind, command", [("rnn-search", "search"), ("rnn-train", "train")])
def test_recurrent_run_resumes_without_space_flag(runs, cli_main, kind, command):
    r = cli_main(command, "--resume", str(runs[kind]))
    assert r.returncode == 0, r.stderr
    assert "already complete" in r.stdout + r.stderr  # reached the run, not a wall of unknown fields
    assert "unknown field" not in r.stderr


@pytest.mark.parametrize(
    "kind, command, says",
    [
        ("cnn-train", "search", "is a training run (cnn-train), not a search; continue it with dartsnas train"),
        ("rnn-train", "search", "is a training run (rnn-train)"),
        ("rnn-search", "train", "is a search run (rnn-search), not a training; continue it with dartsnas search"),
    ],
)
def test_run_of_the_other_command_is_refused_in_one_line(runs, cli_main, kind, command, says):
    r = cli_main(command, "--resume", str(runs[kind]))
    assert r.returncode == 2
    assert says in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_runs_own_config_file_is_read_back(tmp_path):
    """``--config RUN/config.json`` (the run's own file, which names its kind) builds the same config; a config
    of another kind of run is refused by name; ``space=cnn`` (the CLI's spelling) means the DARTS space."""
    import json

    from dartsnas.errors import ConfigError
    from dartsnas.loops.rnn_train import RNNTrainConfig
    from dartsnas.loops.search import SearchConfig

    cfg = SearchConfig.build("tiny", ["seed=5"])
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"kind": "cnn-search", **cfg.to_dict()}))
    assert SearchConfig.build(config_file=path) == cfg
    with pytest.raises(ConfigError, match="the config of a 'cnn-search' run; this command takes 'rnn-train'"):
        RNNTrainConfig.build(config_file=path)
    assert SearchConfig.build(overrides=["space=cnn"]).space == "darts"
    assert SearchConfig.build(overrides={"space": "cnn"}).space == "darts"
