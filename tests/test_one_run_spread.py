"""Numbers as printed. One run has no spread: tables and log lines show the mean alone, never a "± 0.00" that
reads as a measured standard deviation; a tiny network's parameter count is not "0.00M"."""

from dartsnas.protocol.compare import _pm, mean_std
from dartsnas.report_table import _mean_std


def test_table_cell_one_run_and_several():
    assert _mean_std({"mean": 2.761, "std": 0.0, "runs": 1}) == "2.76 (1 run)"
    assert _mean_std({"mean": 2.761, "std": 0.09, "runs": 4}) == "2.76 ± 0.09 (4 runs)"


def test_compare_line_one_seed_and_several():
    assert _pm(mean_std([93.5])) == "93.50"
    assert _pm(mean_std([93.0, 94.0])) == "93.50 ± 0.71"


def test_parameter_counts_of_tiny_networks_are_not_zero_millions():
    from dartsnas.cli.train import _count

    assert _count(3_349_342) == "3.35M" and _count(573_781_120, 0) == "574M"
    assert _count(4_210) == "4,210" and _count(52_000, 0) == "52,000" and _count(410_890, 0) == "0.41M"
