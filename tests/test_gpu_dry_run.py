"""The GPU tests (tests/test_gpu.py) run on the CPU at tiny settings, the graph step uncaptured: a broken helper
or a test that cannot pass for reasons unrelated to the GPU shows up in CI, not in scarce device time.
(The first dry run found two: the tests read running sums from the search state, which no longer holds them,
and DARTS-PT's default tuning epochs did not fit the paper's 50 epochs.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_tests_pass_as_a_cpu_dry_run(tmp_path):
    out = tmp_path / "dry.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "test_gpu.py"), "--cpu-dry-run", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    results = json.loads(out.read_text())["results"]
    assert len(results) >= 12 and all(t["status"] == "passed" for t in results), results
