"""The paper's experimental protocol (spec §9) as a library: selection, random baseline, final evaluation.

An *experiment directory* holds every run of one protocol stage and what was decided from them::

    EXP/experiment.json          kind (select | random | final), space, method, the resolved ProtocolConfig
    EXP/runs/search-seedN/       one `dartsnas search` run per seed                 (select)
    EXP/runs/select-seedN/       the short training of search-seedN's cell          (select)
    EXP/runs/random-K/           the short training of random cell K                (random)
    EXP/runs/final-seedN/        a full training of the chosen (or given) cell     (evaluate-final)
    EXP/genotypes/*.json         the sampled random cells, the chosen cell, the finally evaluated cell
    EXP/status/<run>.json        per run: status, attempts, return code, error, device, seconds, command
    EXP/logs/<run>.log           the run's stdout and stderr
    EXP/summary.json             runs, scores, the pick, cost, final mean ± std (rewritten after every run)

Every run is a separate ``python -m dartsnas search|train`` process, pinned to one device (one GPU via
``CUDA_VISIBLE_DEVICES`` when GPUs are visible, else a CPU process with ``OMP_NUM_THREADS`` set), ``jobs`` at
a time. ``resume=True`` skips finished runs and continues interrupted ones with their own ``--resume``; a run
that failed is recorded with its error and left out of the pick (``retry_failed=True`` runs it again).

Selection never reads a test set: CNN selection trainings train on D_w and score on D_alpha
(``eval_split=search_valid``), recurrent ones train on train and score on valid (spec §9 [SPEC]).

Usage::

    from dartsnas.protocol import ProtocolConfig, select, random_baseline, evaluate_final
    cfg = ProtocolConfig.build("quick", searches=2, search_epochs=1)
    res = select(cfg, "experiments/quick")
    print(res.summary["chosen"])

Modules: ``config`` (ProtocolConfig), ``experiment`` (the directory and its records), ``runner`` (the scheduler
of runs), ``stages`` (select, random baseline, final evaluation), ``summary`` (the pick, cost, mean ± std).
The random cells come from ``dartsnas.space.sample``.
"""

from .config import ProtocolConfig, loop_configs
from .experiment import EXPERIMENT_FILE, SUMMARY_FILE, Experiment, ExperimentResult
from .stages import evaluate_final, random_baseline, select
from .summary import load_summary, summarize

__all__ = [
    "ProtocolConfig",
    "loop_configs",
    "Experiment",
    "ExperimentResult",
    "EXPERIMENT_FILE",
    "SUMMARY_FILE",
    "select",
    "random_baseline",
    "evaluate_final",
    "summarize",
    "load_summary",
]
