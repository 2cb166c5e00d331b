#!/usr/bin/env bash
# Every GPU check of issue #13 in one run, for a lent GPU machine (one H200, ~8 minutes):
#
#   bash bench/gpu_check.sh            # on the GPU machine (after bash bench/gpu_wheels.sh here,
#                                      # with the device run's carry: [".whl"])
#   bash bench/gpu_check.sh --smoke    # here, on the CPU, tiny sizes (or GPU_CHECK_SMOKE=1):
#                                      # proves the plumbing, arguments and helpers
#
# Writes $OUT/results.md (machine facts, one section per step: rc, wall time, its tables and
# RESULT lines, ready to paste into bench/RESULTS.md) and $OUT/logs.tar.gz (every step's full
# log and JSON), both refreshed after each step, so a run cut short still returns what it did.
# $OUT defaults to a new temporary folder. Each step has its own timeout and the whole run a
# budget (GPU_CHECK_BUDGET_S, default 480 s): a step never starts with less than 15 s left,
# a hang costs one step, and a failing step does not stop the others.
#
# Steps: a. the tests skipped without CUDA; d. --gpus 1 checkpoint command, stop, bit-exact
# resume (+ NCCL under torchrun); f. the cockpit's GPU pane on real NVML + MFU; e. checkpoint
# stall, async vs sync; g. float8 vs bf16 training; c. engine vs plain PyTorch loop, and
# device-resident data vs DataLoader; b. precision x channels_last x compile (last: it gets
# what is left of the budget, most-informative variants first).
set -u
export PYTHONUNBUFFERED=1

SMOKE=${GPU_CHECK_SMOKE:-0}
for arg in "$@"; do
  case "$arg" in
    --smoke) SMOKE=1 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg (expected --smoke)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.." || exit 1
REPO=$PWD
OUT=${OUT:-$(mktemp -d /tmp/gpu-check-out.XXXXXX)}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/gpu-check-work.XXXXXX)
LOGS=$WORK/logs
mkdir -p "$LOGS"
RESULTS=$OUT/results.md
BUDGET=${GPU_CHECK_BUDGET_S:-480}
T0=$(date +%s)
PY=python3

elapsed() { echo $(( $(date +%s) - T0 )); }

pack() {  # logs.tar.gz of every log so far (one file back instead of many)
  tar -czf "$OUT/logs.tar.gz.tmp" -C "$WORK" logs 2>/dev/null && mv "$OUT/logs.tar.gz.tmp" "$OUT/logs.tar.gz"
}

SUMMARY=()

# step NAME TITLE CAP_S COMMAND...: run under timeout, log to $LOGS/NAME.log, summarize into results.md
step() {
  local name=$1 title=$2 cap=$3
  shift 3
  local left=$(( BUDGET - $(elapsed) ))
  local limit=$(( cap < left ? cap : left ))
  {
    echo
    echo "## $title"
    echo
  } >> "$RESULTS"
  if [ "$limit" -lt 15 ]; then
    echo "not run: $left s of the ${BUDGET} s budget left" >> "$RESULTS"
    SUMMARY+=("| $name | not run (budget) | | |")
    echo "[$(elapsed) s] $name: not run (budget)"
    return
  fi
  echo "[$(elapsed) s] $name (timeout ${limit} s): $*"
  echo "\`$*\` (timeout ${limit} s)" >> "$RESULTS"
  echo >> "$RESULTS"
  local start=$(date +%s.%N)
  timeout -k 10 "$limit" "$@" > "$LOGS/$name.log" 2>&1
  local rc=$?
  local wall
  wall=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  local verdict=ok
  [ "$rc" -ne 0 ] && verdict="FAILED (rc $rc)"
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && verdict="TIMED OUT after ${limit} s (rc $rc)"
  echo "**${verdict}**, ${wall} s" >> "$RESULTS"
  echo >> "$RESULTS"
  # tables as they are (markdown), then the key lines in a block
  grep -E '^\|' "$LOGS/$name.log" >> "$RESULTS"
  echo >> "$RESULTS"
  {
    echo '```'
    grep -E '^(RESULT|SKIPPED|FAILED|ERROR|PASSED|<!--|[0-9]+ (passed|failed|skipped)|=+ .*(passed|failed|skipped|error).* =+$|engine/plain|median|per-round|best-10|round [0-9]|resnet|float8 filter|stop:|engine exit|NVML GPU|doctor at|highlighted|reference run|checkpoint command|stopped run|resumed run| +GPU[0-9]| +pid [0-9])' \
      "$LOGS/$name.log" | head -60
    if [ "$rc" -ne 0 ]; then
      echo "--- last lines of $name.log ---"
      tail -25 "$LOGS/$name.log"
    fi
    echo '```'
  } >> "$RESULTS"
  SUMMARY+=("| $name | $verdict | $wall | $limit |")
  echo "[$(elapsed) s] $name: $verdict, $wall s"
  pack
}

# ---- install the carried wheels ------------------------------------------------------------
{
  echo "# bench/gpu_check.sh results"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), mode: $([ "$SMOKE" = 1 ] && echo 'smoke (CPU, tiny sizes)' || echo 'GPU'), budget ${BUDGET} s, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' + uncommitted changes')"
  echo
} > "$RESULTS"

if [ "$SMOKE" = 1 ]; then
  # the wheels are for the GPU image's Python 3.12; the smoke test uses this machine's packages
  export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
  echo "wheels: not installed (smoke mode: this machine's environment; $(ls .whl/*.whl 2>/dev/null | wc -l) in .whl)" >> "$RESULTS"
elif ls .whl/*.whl > /dev/null 2>&1; then
  if $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      > "$LOGS/install.log" 2>&1; then
    export PYTHONPATH=/tmp/site:$REPO
    echo "wheels: installed $(ls .whl/*.whl | wc -l) from .whl into /tmp/site" >> "$RESULTS"
  else
    export PYTHONPATH=$REPO
    echo "wheels: **install FAILED** (see install.log); going on with the image's packages" >> "$RESULTS"
    tail -5 "$LOGS/install.log" >> "$RESULTS"
  fi
else
  export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
  echo "wheels: **.whl is missing** (run bash bench/gpu_wheels.sh here and carry .whl); going on" >> "$RESULTS"
fi

# ---- machine facts ---------------------------------------------------------------------------
{
  echo
  echo "## Machine"
  echo
  echo '```'
  if command -v nvidia-smi > /dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm,compute_cap --format=csv 2>&1
    nvidia-smi -q 2>/dev/null | grep -E '^\s*(Product Name|Driver Version|CUDA Version|Product Architecture|Persistence Mode|MIG Mode|Current +:|Power Limit)' | head -12
  else
    echo "nvidia-smi: not found"
  fi
  echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; $(free -g 2>/dev/null | awk '/Mem:/ {print $2 " GiB memory"}'); kernel $(uname -r)"
  $PY - <<'EOF' 2>&1
import importlib.metadata as md, platform, torch
print(f"Python {platform.python_version()}; torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else "?"
    print(f"GPU 0: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, capability {p.major}.{p.minor}; NCCL {nccl}")
else:
    print("torch sees no CUDA device")
names = ["torchvision", "triton", "torchao", "numpy", "textual", "rich", "pydantic", "optuna", "nvidia-ml-py",
         "psutil", "pytest", "pytest-asyncio", "pytest-timeout", "tensorboard", "timm", "typing-extensions",
         "python-dateutil"]
found = []
for n in names:
    try:
        found.append(f"{n} {md.version(n)}")
    except md.PackageNotFoundError:
        found.append(f"{n} MISSING")
print("; ".join(found))
EOF
  echo '```'
} >> "$RESULTS"
pack

# ---- the steps -------------------------------------------------------------------------------
# The tests that CUDA changes (grep tests/ for cuda.is_available, device_count, skipif):
# test_gpu.py (skipped without CUDA), test_quantize's bad-config test (its float8 cases differ
# on a GPU), test_cli's --gpus refusal (asks for more GPUs than there are).
GPU_TESTS=(tests/test_gpu.py "tests/test_cli.py::test_gpus_without_cuda_and_a_zero_process_count_are_refused"
           "tests/test_quantize.py::test_versions_are_checked_with_an_install_hint"
           "tests/test_quantize.py::test_bad_quantized_training_configs_exit_2_before_a_run_directory_exists")
# Plugins named, not auto-loaded: the image's own pytest plugins (xdist, cov, benchmark, ...) stay out,
# and with them pyproject's `-n auto --dist loadfile` (-o addopts=): these few tests run in one process.
PYTEST=(env PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 "$PY" -m pytest -o addopts= -p pytest_timeout -p pytest_asyncio.plugin
        -p no:cacheprovider -rfEs -q --timeout 240)

if [ "$SMOKE" = 1 ]; then
  # the quantize bad-config test trains 5 runs first (its module fixture): minutes on 2 cores
  step a "a. tests that need CUDA" 120 "${PYTEST[@]}" "${GPU_TESTS[@]:0:3}"
  step d "d. checkpoint command, stop, bit-exact resume; collectives" 150 \
    "$PY" bench/gpu_resume_check.py --device cpu --epochs 2 --samples 640 --timeout 100
  step f "f. cockpit GPU pane and MFU" 90 \
    "$PY" bench/gpu_pane_check.py --device cpu --model small_cnn --batch 64 --precision fp32 --watch-s 15
  step e "e. checkpoint stall: async (host copy) vs sync save" 60 \
    "$PY" bench/checkpoint_stall.py --device cpu --model resnet18 --rounds 3
  step g "g. float8 training vs bf16" 90 \
    "$PY" bench/gpu_throughput_check.py float8 --device cpu --hidden 64 64 --features 256 --batch 32 --steps 10 --no-compile
  step c1 "c. engine vs plain PyTorch loop" 90 \
    "$PY" bench/engine_vs_plain.py --device cpu --model small_cnn --width 8 --batch-size 32 --warmup 10 --steps 10 --rounds 1
  step c2 "c. device-resident data vs DataLoader (32x32)" 90 \
    "$PY" bench/gpu_throughput_check.py datapath --device cpu --model small_cnn --precision fp32 --batch 64 --steps 20 --workers 1
  step b "b. precision x channels_last x compile" 120 \
    "$PY" bench/gpu_precision.py --device cpu --models resnet18_32 --precisions fp32 tf32 --variants plain \
    --steps 4 --batch 16 --budget-s 60 --json-out "$LOGS/precision.json"
else
  step a "a. tests that need CUDA" 110 "${PYTEST[@]}" "${GPU_TESTS[@]}"
  step d "d. --gpus 1: checkpoint command, stop, bit-exact resume; NCCL" 75 \
    "$PY" bench/gpu_resume_check.py --timeout 60
  step f "f. cockpit GPU pane on NVML, and MFU" 60 "$PY" bench/gpu_pane_check.py --timeout 45
  step e "e. checkpoint stall on the GPU: async (pinned, reused) vs sync save" 45 \
    "$PY" bench/checkpoint_stall.py --device cuda --model resnet50 --rounds 6
  step g "g. float8 training vs bf16 (mlp, compiled)" 100 "$PY" bench/gpu_throughput_check.py float8 --timeout 55
  step c1 "c. engine vs plain PyTorch loop on the GPU" 60 \
    "$PY" bench/engine_vs_plain.py --device cuda --precision bf16 --batch-size 256 --warmup 20 --steps 100 --rounds 2
  step c2 "c. device-resident data vs DataLoader (ResNet-18 32x32)" 50 \
    "$PY" bench/gpu_throughput_check.py datapath --timeout 40
  left=$(( BUDGET - $(elapsed) - 20 ))
  step b "b. precision x channels_last x compile (ResNet-18 32, ResNet-50 224)" $(( left > 15 ? left : 15 )) \
    "$PY" bench/gpu_precision.py --models resnet18_32 resnet50_224 --precisions fp32 tf32 fp16 bf16 \
    --steps 60 --budget-s $(( left - 25 > 10 ? left - 25 : 10 )) --json-out "$LOGS/precision.json"
fi

# ---- summary ---------------------------------------------------------------------------------
{
  echo
  echo "## Steps"
  echo
  echo "| step | result | wall s | timeout s |"
  echo "|---|---|---:|---:|"
  printf '%s\n' "${SUMMARY[@]}"
  echo
  echo "total: $(elapsed) s"
} >> "$RESULTS"
cp "$RESULTS" "$LOGS/results.md"
pack
rm -rf "$WORK"
echo "[$(elapsed) s] done: $RESULTS, $OUT/logs.tar.gz"
cat "$RESULTS"
failed=0
for row in "${SUMMARY[@]}"; do
  case "$row" in *"| ok |"*) ;; *) failed=1 ;; esac
done
exit $failed
