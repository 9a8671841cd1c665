#!/usr/bin/env bash
# One call on a lent GPU machine (bare, its own torch and Python, no network, root): build fastsn in place for
# TORCH_CUDA_ARCH_LIST (default 9.0), print fastsn.info, run the whole test suite with the CUDA and Triton
# backends on the GPU, run the CUDA kernels' tests under compute-sanitizer (memcheck, racecheck), run every
# benchmark with --benchmark-json, profile the headline cases (benchmarks/profile_steps.py), and write one results
# folder (at most 8 files) with the device, driver, torch/CUDA/Triton versions and the commit. Each stage gets a
# share of DEVICE_RUN_BUDGET seconds (default 560), so the results come back inside the tool's 10-minute limit even
# when a stage hangs.
#
# Usage:
#   benchmarks/device_run.sh [--dry-run] [OUT_DIR]      (OUT_DIR defaults to $OUT, else ./device-results)
#   --dry-run: the same script on a machine without a GPU (CI): build check, CPU tests, benchmarks once each,
#              no GPU steps, so that the script cannot rot.
# Environment: PYTHON (default python3), FASTSN_COMMIT (the commit, when the tree travels without .git),
#   DEVICE_RUN_BUDGET, PYTEST_WORKERS (default 8; pytest-xdist when installed), BENCH_FILTER (a pytest -k),
#   DEVICE_RUN_CPU_BENCH=1 (also time the benchmarks on the host CPU), DEVICE_RUN_STAGES (a comma list of
#   tests, bench, sanitizer; default all three). When the whole suite and the benchmarks no longer fit one call,
#   split them: DEVICE_RUN_STAGES=tests, then DEVICE_RUN_STAGES=bench,sanitizer (the second build reuses the
#   first's objects on a warm machine); a stage run alone gets the budget the others would have taken.
set -uo pipefail
cd "$(dirname "$0")/.."

dry_run=0
if [ "${1:-}" = "--dry-run" ]; then dry_run=1; shift; fi
out=${1:-${OUT:-device-results}}
mkdir -p "$out"
python=${PYTHON:-python3}
budget=${DEVICE_RUN_BUDGET:-560}
start=$SECONDS
failed=()
export PYTHONUNBUFFERED=1

# Run a stage with at most `share` seconds (capped by what is left of the budget), its output in $out/$log.
stage() {
  local name=$1 share=$2 log=$3
  shift 3
  local left=$((budget - (SECONDS - start)))
  local limit=$((share < left ? share : left))
  printf '\n=== %s (t=%ss, limit %ss)\n' "$name" "$((SECONDS - start))" "$limit" | tee -a "$out/$log"
  if [ "$limit" -le 5 ]; then
    echo "skipped: budget spent" | tee -a "$out/$log"
    failed+=("$name (no time left)")
    return 1
  fi
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$out/$log"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    failed+=("$name (exit $rc)")
  fi
  return "$rc"
}

have_module() { "$python" -c "import $1" >/dev/null 2>&1; }
xdist=()
if have_module xdist; then xdist=(-n "${PYTEST_WORKERS:-8}"); fi

commit=${FASTSN_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $commit"
  echo "dry_run: $dry_run"
  echo "host: $(uname -srm), $(nproc) cores"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
  fi
  "$python" -c "
import sys, torch
print('python:', sys.version.split()[0], sys.executable)
print('torch:', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print('gpu:', p.name, f'cc {p.major}.{p.minor}', p.multi_processor_count, 'SMs', p.total_memory >> 20, 'MiB')
try:
    import triton; print('triton:', triton.__version__)
except ImportError:
    print('triton: not installed')
"
  command -v nvcc >/dev/null && nvcc --version | tail -n 2
  c++ --version | head -n 1
} 2>&1 | tee "$out/env.txt"

gpu=0
if [ "$dry_run" = 0 ] && "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  gpu=1
elif [ "$dry_run" = 0 ]; then
  echo "no GPU visible: run with --dry-run on a machine without one" | tee -a "$out/env.txt"
  exit 2
fi

# The lent GPU image sets CC/CXX to /opt/gcc, whose g++ links libstdc++ statically into shared objects (seen
# 2026-11-23: fastsn._C then crashed on its first error message; setup.py now refuses such a compiler). Build
# with the system compiler, whose shared libstdc++ is the one torch loads.
if [[ "$(${CXX:-c++} -print-file-name=libstdc++.so 2>/dev/null)" != /* ]] && [ -x /usr/bin/g++ ]; then
  echo "CXX=${CXX:-c++} has no shared libstdc++: building with /usr/bin/gcc and /usr/bin/g++" | tee -a "$out/env.txt"
  export CC=/usr/bin/gcc CXX=/usr/bin/g++
fi

if [ "$gpu" = 1 ]; then
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
  export FASTSN_TEST_REQUIRE=${FASTSN_TEST_REQUIRE:-cpu,cuda-build,cuda,triton}
else
  export TRITON_INTERPRET=1 MAX_JOBS=${MAX_JOBS:-2}
  export FASTSN_TEST_REQUIRE=cpu,triton  # the dry run builds without CUDA, whatever the caller required
fi

stage "build (pip install -e)" 240 build.log \
  "$python" -m pip install --no-build-isolation --no-deps --disable-pip-version-check -e . || {
  echo "build failed: nothing else can run"; tail -n 40 "$out/build.log"; exit 1; }
stage "fastsn.info" 60 build.log "$python" -m fastsn.info
# a libstdc++ linked into fastsn._C (see the CC/CXX note above) crashes on the first TORCH_CHECK message
stage "fastsn._C uses the shared libstdc++" 10 build.log \
  bash -c '! nm -C --defined-only fastsn/_C*.so | grep "std::ostream::_M_insert<long>"'

pytest=("$python" -m pytest -p no:cacheprovider -q -ra)
stages=",${DEVICE_RUN_STAGES:-tests,bench,sanitizer},"
wants() { [[ "$stages" == *",$1,"* ]]; }
tests_share=200 bench_share=180
if ! wants bench && ! wants sanitizer; then tests_share=500; fi
if ! wants tests; then bench_share=360; fi
if [ "$gpu" = 1 ]; then
  if wants tests; then
    stage "tests (whole suite, cuda + triton on the GPU)" "$tests_share" tests.log \
      "${pytest[@]}" "${xdist[@]}" tests
  fi
  if wants bench; then
    stage "ceilings: copy bandwidth and matmul rate" 40 bench.log "$python" benchmarks/ceilings.py \
      --out "$out/ceilings.json"
    stage "benchmarks on cuda" "$bench_share" bench.log "${pytest[@]}" benchmarks \
      -k "cuda and ${BENCH_FILTER:-not nothing}" --benchmark-json="$out/bench-cuda.json" --benchmark-max-time=0.25 \
      --benchmark-columns=median,iqr,rounds
  fi
  if ! wants sanitizer; then
    :
  elif command -v compute-sanitizer >/dev/null; then
    # the CUDA backend's op tests in float32 (every kernel path: small, large, grouped, backward)
    stage "compute-sanitizer memcheck" 45 sanitizer.log \
      compute-sanitizer --tool memcheck --error-exitcode 1 --print-limit 20 \
      "${pytest[@]}" -x tests/test_spectral_norm.py tests/test_bias_leaky_relu.py tests/test_gradient_penalty_head.py \
      tests/test_minibatch_l1_similarity.py tests/test_minibatch_stddev.py tests/test_mlp_input_gradient.py \
      -k "cuda-cuda and float32 and not gradcheck and not opcheck"
    stage "compute-sanitizer racecheck" 45 sanitizer.log \
      compute-sanitizer --tool racecheck --error-exitcode 1 --print-limit 20 \
      "${pytest[@]}" -x tests/test_spectral_norm.py -k "cuda-cuda and float32 and (power_iteration_matches or large_weights)"
    # the minibatch-discrimination kernels share tiles of M through shared memory
    stage "compute-sanitizer racecheck (minibatch)" 45 sanitizer.log \
      compute-sanitizer --tool racecheck --error-exitcode 1 --print-limit 20 \
      "${pytest[@]}" -x tests/test_minibatch_l1_similarity.py -k "cuda-cuda and float32 and forward_and_backward"
  else
    failed+=("compute-sanitizer not found")
  fi
  if wants bench; then  # why the times are what they are: GPU kernel time against wall time, launches, kernels
    stage "profile: wall time against GPU kernel time" 90 bench.log "$python" benchmarks/profile_steps.py \
      --device cuda
  fi
  if [ "${DEVICE_RUN_CPU_BENCH:-0}" = 1 ]; then  # the host CPU's figures: off by default, they take minutes
    stage "benchmarks on cpu" 120 bench.log "${pytest[@]}" benchmarks -k "cpu and ${BENCH_FILTER:-not nothing}" \
      --benchmark-json="$out/bench-cpu.json" --benchmark-max-time=0.25 --benchmark-columns=median,iqr,rounds
  fi
  ceilings=()
  [ -f "$out/ceilings.json" ] && ceilings=(--ceilings "$out/ceilings.json")
  for json in "$out"/bench-*.json; do
    [ -f "$json" ] && "$python" benchmarks/report.py --summary "${ceilings[@]}" "$json" 2>&1 | tee -a "$out/summary.md"
  done
else
  stage "tests (CPU and the Triton interpreter)" 600 tests.log "${pytest[@]}" tests/test_build_info.py \
    tests/test_backend.py tests/test_info.py
  stage "ceilings" 120 bench.log "$python" benchmarks/ceilings.py --out "$out/ceilings.json"
  stage "benchmarks once each" 300 bench.log "${pytest[@]}" benchmarks --benchmark-disable -k "build_info or linear-128x1"
  stage "profile (CPU)" 120 bench.log "$python" benchmarks/profile_steps.py --device cpu --iterations 2
fi

printf '\n=== device_run done in %ss: %s\n' "$((SECONDS - start))" "$out"
ls -l "$out"
if [ "${#failed[@]}" -gt 0 ]; then
  printf 'FAILED: %s\n' "${failed[@]}"
  exit 1
fi
echo "all stages passed"
