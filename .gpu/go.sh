#!/bin/bash
# The prepared GPU check for issue 11 (notes/speed.md): GPU tests, then every benchmark, then a short
# real-data search in eager and CUDA-graph mode. Results (JSON and logs) go to $OUT. Internal time limits
# keep the whole run inside about 8 minutes on an H100/H200-class GPU; a step that would not fit is skipped
# and says so in $OUT/summary.txt.
#
#   python .gpu/prepare_data.py               # once, on the machine with the shared data: .gpu_data/ (ignored)
#   OUT=/tmp/gpu-out bash .gpu/go.sh          # on the GPU machine, from the repository root
#
# Needs: python with torch (CUDA) and numpy; pytest optional (a plain runner is used without it).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/dartsnas-gpu-out}
PY=${PYTHON:-python}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT"
export OUT
START=$(date +%s)
TOTAL=${GO_TOTAL_SECONDS:-470}
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

left() { echo $(( TOTAL - ($(date +%s) - START) )); }
note() { echo "$(date +%T) [+$(( $(date +%s) - START ))s] $*" | tee -a "$SUMMARY"; }
# run NAME WANT_SECONDS COMMAND...: run with a limit of min(WANT, time left - 10 s); skip below 30 s
run() {
  local name=$1 want=$2; shift 2
  local avail=$(( $(left) - 10 ))
  local limit=$(( want < avail ? want : avail ))
  if [ "$limit" -lt 30 ]; then note "$name: SKIPPED (only ${avail}s left)"; return; fi
  note "$name: start (limit ${limit}s)"
  timeout --kill-after=5 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then note "$name: TIMED OUT after ${limit}s"; else note "$name: exit $rc"; fi
}

note "environment"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
$PY - > "$OUT/environment.json" 2>&1 <<'PYEOF'
import json, platform, importlib.util as u
import torch
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                  "device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                  "python": platform.python_version(),
                  "have": {m: u.find_spec(m) is not None for m in ("numpy", "pytest", "triton")}}, indent=1))
PYEOF
cat "$OUT/environment.json" >> "$SUMMARY"

# 1. GPU tests (tests/test_gpu.py)
if $PY -c "import pytest" 2>/dev/null; then
  run gpu-tests 200 $PY -m pytest tests/test_gpu.py -m gpu -q -rA -p no:cacheprovider --junitxml="$OUT/gpu-tests.xml"
else
  run gpu-tests 200 $PY tests/test_gpu.py --out "$OUT/gpu-tests.json"
fi
tail -n 15 "$OUT/gpu-tests.log" >> "$SUMMARY"

# 2. every benchmark, reference settings (benchmarks/run_all.py; search 150 s, train 45 s, rnn 45 s)
run benchmarks 255 $PY benchmarks/run_all.py --device cuda --out-dir "$OUT/bench" \
  --limit search=140 --limit train=40 --limit train-graph=40 --limit rnn=35 --label "go.sh"
tail -n 3 "$OUT/benchmarks.log" >> "$SUMMARY"

# 3. a short real-data search through run_search, eager against graph mode
if [ -f .gpu_data/cifar10-subset.npz ]; then
  run real-search 75 $PY .gpu/real_search.py --data .gpu_data/cifar10-subset.npz --out "$OUT/real-search.json"
else
  note "real-search: SKIPPED (no .gpu_data/cifar10-subset.npz; run .gpu/prepare_data.py and carry .gpu_data)"
fi

# 4. the ratios against the reference's H100 figures (indicative only on another GPU model)
$PY - >> "$SUMMARY" 2>&1 <<'PYEOF'
import json, os, pathlib
out = pathlib.Path(os.environ.get("OUT", "/tmp/dartsnas-gpu-out"))
p = out / "bench" / "all.json"
if p.exists():
    s = json.loads(p.read_text())
    for r in s["benchmarks"].get("search", {}).get("results", []):
        print("search", r.get("mode"), "order", r.get("order"), "steps/s", r.get("steps_per_s"),
              "ratio to H100 reference", r.get("ratio_to_reference_h100"), r.get("error", "")[:200])
    for name in ("train", "train-graph"):
        t = s["benchmarks"].get(name)
        if t:
            print(name, "steps/s", t.get("steps_per_s"), "ratio", t.get("ratio_to_reference_h100"))
    for k, v in s["benchmarks"].get("rnn", {}).get("results", {}).items():
        print("rnn", k, "steps/s", round(v["steps_per_s"], 3), "ratio", v.get("ratio_to_reference_h100"))
    print("failures:", list(s.get("failures", {})))
PYEOF
note "done ($(left)s of ${TOTAL}s left)"
