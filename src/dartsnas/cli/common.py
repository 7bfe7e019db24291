"""What every subcommand shares: the parser class, config options, run targets, data-folder inference, the
thread choice and the clean-up of a run directory that a failed start created."""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ConfigError, DartsError, DataError, NonFiniteError, RunDirError, UsageError
from ..lock import release_run_dir


class Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting, so errors stay one line (a usage error,
    exit code 2), and that takes no abbreviated option (``--epoch`` is not silently ``--epochs``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def positive_int(text: str) -> int:
    """argparse ``type`` of the integer options that must be positive (--threads, --batch-size, ...):
    argparse names the option in the one-line usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def add_config_options(p: argparse.ArgumentParser, presets: list[str]) -> None:
    p.add_argument("--preset", metavar="NAME", help=f"start from a preset ({', '.join(presets)})")
    p.add_argument("--config", metavar="FILE", help="a JSON file of config fields")
    p.add_argument(
        "--set",
        "-s",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field (repeatable), e.g. --set layers=5",
    )
    p.add_argument("--run-dir", metavar="DIR", help="where to write the run (default runs/<kind>-<time>)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in RUN from its last checkpoint")
    p.add_argument(
        "--auto-resume",
        action="store_true",
        help="with --run-dir: continue the run there if it has a checkpoint, else start it (for job "
        "schedulers and torchrun --max-restarts: the same command line starts and continues)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_show_config(p)
    add_threads_option(p)


def add_show_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--show-config",
        action="store_true",
        help="print the resolved config (every field --set accepts) as JSON and exit",
    )


def add_threads_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="CPU intra-op threads (default: OMP_NUM_THREADS if set, else 1 for runs on the built-in "
        "data or with fewer than 4 cores, up to 4 otherwise)",
    )


def add_model_options(p: argparse.ArgumentParser) -> None:
    """First-class flags for the most used fields (the original scripts' --layers, --init_channels,
    --learning_rate); each is the same as --set NAME=VALUE."""
    p.add_argument("--layers", type=str, help="cells in the network (same as --set layers=N)")
    p.add_argument(
        "--init-channels",
        dest="init_channels",
        type=str,
        help="channels of the first cell (same as --set init_channels=N)",
    )
    p.add_argument("--lr", type=str, help="initial weight learning rate (same as --set lr=X)")


def show_config(cfg) -> int:
    print(json.dumps(cfg.to_dict(), indent=2))
    return 0


def overrides(args: argparse.Namespace, names: list[str]) -> list[str]:
    out = list(args.set)
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value is not False:
            out.append(f"{name}={value}")
    if getattr(args, "no_progress", False):
        out.append("progress=false")
    return out


def run_target(args: argparse.Namespace) -> tuple[str | None, bool]:
    """(run directory, resume?) for a run command, with ``--resume RUN`` or ``--auto-resume --run-dir DIR``.

    With --auto-resume the config still comes from the command line; the loop then refuses a checkpoint
    whose config differs (field by field), so a changed command cannot silently continue another run.
    """
    if getattr(args, "auto_resume", False):
        if args.resume:
            raise ConfigError("--auto-resume and --resume exclude each other")
        if not args.run_dir:
            raise ConfigError("--auto-resume needs --run-dir")
        from ..loops.common import CHECKPOINT

        return args.run_dir, (Path(args.run_dir) / CHECKPOINT).exists()
    return args.resume or args.run_dir, bool(args.resume)


def resolve_config(cls, args: argparse.Namespace, names: list[str]):
    """A fresh config, or for --resume the run's own config with the given overrides on top."""
    over = overrides(args, names)
    if args.resume:
        path = Path(args.resume) / "config.json"
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise RunDirError(f"cannot read the run's config ({e})", str(path)) from None
        saved.pop("kind", None)
        if args.preset or args.config:
            raise ConfigError("--preset/--config cannot be combined with --resume (the run keeps its config)")
        return cls.build(overrides=over, **{k: v for k, v in saved.items()})
    return cls.build(args.preset, over, args.config)


def run_kind(folder: Path) -> str | None:
    """The ``kind`` a run directory's config.json records (cnn-search, rnn-train, ...), or None."""
    try:
        return json.loads((folder / "config.json").read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


_RUN_KINDS = {"search": ("cnn-search", "rnn-search"), "train": ("cnn-train", "rnn-train")}
_RUN_NOUN = {"search": "search", "train": "training"}


def follow_resumed_kind(args: argparse.Namespace, command: str) -> None:
    """``--resume RUN``: the run's own kind sets ``args.space`` (a recurrent run resumes without ``--space rnn``),
    and a run of the other command (``search``/``train``) is refused in one line naming the one that continues it."""
    if not args.resume:
        return
    kind = run_kind(Path(args.resume))
    other = "train" if command == "search" else "search"
    if kind in _RUN_KINDS[other]:
        raise ConfigError(
            f"{args.resume} is a {_RUN_NOUN[other]} run ({kind}), not a {_RUN_NOUN[command]}; "
            f"continue it with dartsnas {other} --resume"
        )
    if kind in _RUN_KINDS[command]:
        if kind.startswith("rnn-"):
            args.space = "rnn"
        elif args.space == "rnn":
            args.space = "cnn"


def named_dataset(args: argparse.Namespace) -> str | None:
    """The dataset the command line names (--dataset or --set dataset=...), else None."""
    return getattr(args, "dataset", None) or next(
        (s.split("=", 1)[1] for s in getattr(args, "set", []) if s.startswith("dataset=")), None
    )


def check_finished(run_dir: str | Path | None, resume: bool, cfg, kind: str) -> str | None:
    """A one-line note when ``--resume`` (or ``--auto-resume``) points at a run that already finished (its
    results are written, or its checkpoint is past the last epoch); None when there is work left. A checkpoint
    of another ``kind`` of run, then a config that differs from the run's, are refused first, as the loop would."""
    if not (resume and run_dir):
        return None
    from ..checkpoint import load_checkpoint
    from ..loops.common import CHECKPOINT, check_resume_config

    folder = Path(run_dir)
    # A damaged or foreign checkpoint is refused, finished run or not, as the loop would.
    ck = load_checkpoint(folder / CHECKPOINT, expect_kind=kind)
    check_resume_config(cfg, ck, folder / CHECKPOINT, log=lambda *a: None)
    if (folder / "results.json").exists():
        return f"{folder} is already complete (results.json written); nothing to resume"
    done = ck.get("epoch")
    if isinstance(done, int) and done >= getattr(cfg, "epochs", done + 1) and not ck.get("step_in_epoch"):
        return f"{folder} is already complete ({done} of {cfg.epochs} epochs); nothing to resume"
    return None


# ------------------------------------------------------------------------------------------- data folders

_TEXT = {"ptb": ("penn", "ptb"), "wikitext2": ("wikitext-2", "wikitext2", "wt2")}
_TEXT_FILES = ("train.txt", "valid.txt", "test.txt")
_CIFAR_KEYS = {"train_data", "train_labels", "test_data", "test_labels"}


def _is_cifar_npz(f: Path) -> bool:
    if not (f.is_file() and f.suffix == ".npz"):
        return False
    try:
        import numpy as np

        with np.load(f) as z:
            return _CIFAR_KEYS <= set(z.files)
    except Exception:  # noqa: BLE001 - not a readable archive: not CIFAR-10
        return False


def _is_text(d: Path) -> bool:
    return d.is_dir() and all((d / f).is_file() for f in _TEXT_FILES)


def _text_name(d: Path) -> str | None:
    low = d.name.lower()
    return next((name for name, folders in _TEXT.items() if low in folders), None)


def _candidates(root: Path) -> list[tuple[str, Path, str]]:
    """Every dataset the folder (or file) holds: (dataset, the data_dir to pass, what was found)."""
    found: list[tuple[str, Path, str]] = []
    if root.is_file():
        if _is_cifar_npz(root):
            found.append(("cifar10", root, "a CIFAR-10 .npz subset"))
        return found
    from ..data.cifar import find_cifar_batches  # the loader's own search (cifar_places), not a copy of it

    batches = find_cifar_batches(root)
    if batches is not None:
        found.append(("cifar10", batches, f"CIFAR-10 batches in {batches}"))
    if _is_text(root):
        name = _text_name(root)
        if name:
            found.append((name, root, f"train/valid/test.txt in {root}"))
        else:
            found.append(("text?", root, f"train/valid/test.txt in {root}"))
    for name, folders in _TEXT.items():
        for sub in folders:
            if _is_text(root / sub):
                found.append((name, root / sub, f"train/valid/test.txt in {root / sub}"))
                break
    if (root / "train").is_dir() and (root / "val").is_dir():
        found.append(("imagenet", root, f"train/ and val/ folders in {root}"))
    return found


def infer_dataset(data_dir: str, space: str, allowed: tuple[str, ...]) -> tuple[str, str]:
    """(dataset, data_dir) from what ``data_dir`` holds, for a command of ``space`` that accepts ``allowed``.

    CIFAR-10 batches (``cifar-10-batches-py`` or a ``.npz`` with the CIFAR keys) -> cifar10;
    ``train.txt``/``valid.txt``/``test.txt`` in ``penn/`` or ``wikitext-2/`` (or in the folder itself, named so)
    -> ptb / wikitext2; ``train/`` and ``val/`` folders -> imagenet. Anything else stops with a one-line error
    naming the choices: a run never silently falls back to the built-in data.
    """
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise DataError("no such folder", str(root))
    found = _candidates(root)
    usable = [c for c in found if c[0] in allowed]
    choices = ", ".join(a for a in allowed if a != "builtin")
    if len(usable) == 1:
        return usable[0][0], str(usable[0][1])
    if any(c[0] == "text?" for c in found) and space == "rnn":
        raise DataError(
            "holds train/valid/test.txt but its name tells neither ptb (penn/) nor wikitext2 "
            f"(wikitext-2/); pass --dataset ({choices})",
            str(root),
        )
    if len(usable) > 1:
        raise DataError(
            f"holds several datasets ({', '.join(c[0] for c in usable)}); pass --dataset ({choices})", str(root)
        )
    if found:
        other = ", ".join(sorted({c[0].rstrip("?") if c[0] != "text?" else "a text corpus" for c in found}))
        hint = (
            " (use --space rnn)"
            if space == "cnn" and any(c[0] in _TEXT or c[0] == "text?" for c in found)
            else " (use --space cnn)"
            if space == "rnn" and any(c[0] in ("cifar10", "imagenet") for c in found)
            else ""
        )
        raise DataError(f"holds {other}, which this command does not take{hint}; pass --dataset ({choices})", str(root))
    raise DataError(
        "cannot tell which dataset this folder holds (expected cifar-10-batches-py/ or a CIFAR .npz, "
        "penn/ or wikitext-2/ with train/valid/test.txt, or imagenet train/ and val/); pass "
        f"--dataset ({choices})",
        str(root),
    )


def apply_dataset_inference(args: argparse.Namespace, space: str, allowed: tuple[str, ...]) -> None:
    """``--data-dir`` without a dataset: fill in ``args.dataset`` (and the exact folder) from the folder."""
    if getattr(args, "resume", None) or getattr(args, "config", None) or named_dataset(args):
        return
    data_dir = getattr(args, "data_dir", None) or next(
        (s.split("=", 1)[1] for s in getattr(args, "set", []) if s.startswith("data_dir=")), None
    )
    if not data_dir:
        return
    dataset, folder = infer_dataset(data_dir, space, allowed)
    args.dataset = dataset
    args.data_dir = folder
    args.set = [s for s in args.set if not s.startswith("data_dir=")]
    print(f"dataset: {dataset} (found in {folder}; --dataset sets it explicitly)", file=sys.stderr)


# ------------------------------------------------------------------------------------------- threads


def apply_threads(args: argparse.Namespace, small: bool) -> None:
    """Set torch's intra-op thread count on CPU by ``dartsnas.threads.choose_threads`` and say so once."""
    from ..threads import choose_threads, set_threads

    n, why = choose_threads(small, explicit=getattr(args, "threads", None))
    set_threads(n)
    if why:
        print(f"threads: {n} ({why})", file=sys.stderr)


# ------------------------------------------------------------------------------------------- failed starts


@contextlib.contextmanager
def cleanup_failed_start(run_dir: str | Path | None, prefix: str) -> Iterator[None]:
    """Remove the run directory when this command created it and the run stopped before saving anything of
    value (a bad device, missing or truncated data, a bad genotype): no empty ``runs/<kind>-<time>`` is left.

    The folder is ``run_dir``, or with none given the new ``runs/<prefix>-*`` folder the loop chose. Only a
    folder that did not exist before the command and holds no checkpoint, metrics record or results is
    removed (and a ``runs/`` parent created for it, when left empty). A non-finite value or an interrupt is a
    run that started: its folder stays.
    """
    parent = Path(run_dir).parent if run_dir else Path("runs")
    parent_existed = parent.exists()
    before = set(parent.iterdir()) if parent.is_dir() else set()
    explicit_new = bool(run_dir) and not Path(run_dir).exists()
    try:
        yield
    except DartsError as e:
        if not isinstance(e, NonFiniteError):
            if run_dir:
                new = [Path(run_dir)] if explicit_new else []
            else:
                new = [
                    p
                    for p in (set(parent.iterdir()) if parent.is_dir() else set()) - before
                    if p.name.startswith(prefix + "-")
                ]
            for path in new:
                if _holds_nothing(path):
                    release_run_dir(path)  # the failed start's own lock (lock.py) goes with the folder
                    shutil.rmtree(path, ignore_errors=True)
            if not parent_existed:
                with contextlib.suppress(OSError):
                    parent.rmdir()
        raise


R = TypeVar("R")


def launch(args: argparse.Namespace, cfg: Any, kind: str, label: str, run: Callable[..., R]) -> R | None:
    """What every search and training command does with its resolved config: print it (``--show-config``),
    or say the run is already finished, or choose the CPU threads and call ``run(cfg, run_dir=..., resume=...)``
    with a failed start cleaned up. ``kind`` is the checkpoint kind, ``label`` the run folder's prefix; None:
    nothing was run (what was printed is the answer)."""
    if args.show_config:
        show_config(cfg)
        return None
    run_dir, resume = run_target(args)
    note = check_finished(run_dir, resume, cfg, kind)
    if note:
        print(note)
        return None
    if runs_on_cpu(cfg.device):
        apply_threads(args, small=cfg.dataset == "builtin")
    with cleanup_failed_start(run_dir, label):
        return run(cfg, run_dir=run_dir, resume=resume)


def runs_on_cpu(device: str) -> bool:
    if device == "cpu":
        return True
    if device != "auto":
        return False
    import torch

    return not torch.cuda.is_available()


def _holds_nothing(path: Path) -> bool:
    if not path.is_dir():
        return True
    valuable = ("checkpoint.pt", "checkpoint.pt.prev", "results.json", "best.pt")
    if any((path / v).exists() for v in valuable):
        return False
    metrics = path / "metrics.jsonl"
    return not (metrics.exists() and metrics.stat().st_size > 0)


def add_scheduler_options(p: argparse.ArgumentParser, set_help: str) -> None:
    """The options every protocol command (select, random, evaluate-final, compare) shares: how many runs at a
    time and where, resuming, and ``--set`` of the command's own config fields (``set_help``: an example)."""
    p.add_argument("--jobs", "-j", type=str, help="runs at a time, each pinned to one GPU or a CPU process")
    p.add_argument("--devices", help="'cpu' or GPU ids '0,1,...' (default: every visible GPU, else CPU)")
    p.add_argument("--resume", action="store_true", help="continue the experiment in --experiment")
    p.add_argument(
        "--retry-failed",
        dest="retry_failed",
        action="store_true",
        help="with --resume: run failed runs again (by default they stay recorded as failed)",
    )
    p.add_argument(
        "--set",
        "-s",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=set_help,
    )


def add_launcher_options(p: argparse.ArgumentParser) -> None:
    """``--launcher`` and the ``--slurm-*`` options of every protocol command (select, random, evaluate-final,
    compare): where the runs execute."""
    g = p.add_argument_group(
        "cluster", "launch every run as a SLURM job through submitit (pip install 'dartsnas[cluster]')"
    )
    g.add_argument(
        "--launcher",
        choices=["local", "slurm", "submitit-local"],
        help="local processes (default), SLURM jobs, or submitit's local executor (jobs on this "
        "machine through the same code path, for testing a cluster setup)",
    )
    g.add_argument("--slurm-partition", dest="slurm_partition", metavar="NAME", help="SLURM partition")
    g.add_argument("--slurm-gpus", dest="slurm_gpus", type=str, metavar="N", help="GPUs per run (default 1)")
    g.add_argument("--slurm-cpus", dest="slurm_cpus", type=str, metavar="N", help="CPUs per run (default 8)")
    g.add_argument(
        "--slurm-time",
        dest="slurm_time",
        type=str,
        metavar="MIN",
        help="time limit of each run in minutes (default 2880); an interrupted run resumes from "
        "its checkpoint with --resume",
    )
    g.add_argument("--slurm-mem", dest="slurm_mem", type=str, metavar="GB", help="memory per run in GB")
    g.add_argument("--slurm-account", dest="slurm_account", metavar="NAME", help="SLURM account")
    g.add_argument(
        "--slurm-setup",
        dest="slurm_setup",
        action="append",
        default=None,
        metavar="CMD",
        help="shell line run before each job (repeatable), e.g. 'module load cuda'",
    )


# The protocol-config fields the launcher options set (resume-harmless, passed through to ProtocolConfig /
# CompareConfig).
LAUNCHER_FIELDS = [
    "launcher",
    "slurm_partition",
    "slurm_gpus",
    "slurm_cpus",
    "slurm_time",
    "slurm_mem",
    "slurm_account",
]
