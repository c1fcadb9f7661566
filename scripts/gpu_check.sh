#!/usr/bin/env bash
# One device call: environment, the sm_90a compile report, CUDA tests, kernel benchmarks,
# end-to-end decode latency.
#
#   device tool:  run(command="bash scripts/gpu_check.sh", timeout_s=600)
#   by hand:      OUT=/tmp/gpu_out bash scripts/gpu_check.sh
#
# Writes under $OUT: env.txt (versions, nvidia-smi, one status line per step), compile_report/
# (infgen.kernels.report on this machine's triton), tests.log + tests/*.xml (JUnit, one per test file),
# native.log (CMake build + ctest of native/, its GPU test included), kernels.json + kernels.log,
# d512.json + d512.log (the scores-once head-dim-512 kernel), decode.log + decode/<size>/ (one
# profiler run per size). STEPS selects steps (default "env report tests native kernels d512
# decode"), e.g. STEPS="kernels d512" bash ... The limits sum past one call: a first GPU session
# runs STEPS="env report tests native", then STEPS="kernels d512 decode".
#
# Time: a device command may run 600 s. Every step runs under `timeout -k` with its own limit,
# cut to what is left of BUDGET (default 540 s, counted from the start of this script), and a
# step is skipped when less than 15 s are left; so the script ends before the device call does,
# and a step that hangs or overruns loses only itself.
set -u
OUT=${OUT:-gpu_out}
STEPS=${STEPS:-"env report tests native kernels d512 decode"}
BUDGET=${BUDGET:-540}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET            # compiled kernels on CUDA, never the interpreter
cd "$(dirname "$0")/.."
# The GPU image reaches no registry and its copy of the repository is not installed: where
# `infgen` does not import, expose the folders as its subpackages through links, the mapping
# pip install -e makes from pyproject.toml's package-dir.
if ! python3 -c "import infgen.runtime" 2>/dev/null; then
  shim="$(mktemp -d)"; mkdir -p "$shim/infgen"
  for pair in ref:infgen_ref kernels:kernels export:export runtime:runtime train:train native:native; do
    ln -s "$PWD/${pair#*:}" "$shim/infgen/${pair%%:*}"
  done
  export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
fi
has() { [[ " $STEPS " == *" $1 "* ]]; }
status() { echo "== $1: rc=$2 ($(date +%T), ${SECONDS}s)" | tee -a "$OUT/env.txt"; }
# run NAME LIMIT CMD...: CMD under `timeout -k 5` with min(LIMIT, budget left - 10) seconds;
# rc 124 = timed out, 125 = skipped (no time left).
run() {
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET - SECONDS - 10))
  if ((left < 15)); then status "$name" "125 (skipped: ${left}s of the budget left)"; return 125; fi
  ((limit > left)) && limit=$left
  timeout -k 5 "$limit" "$@"
  local rc=$?
  status "$name" "$rc$( ((rc == 124 || rc == 137)) && echo " (timed out after ${limit}s)")"
  return $rc
}

if has env; then
  { date -u; git rev-parse --short HEAD 2>/dev/null; nvidia-smi; \
    python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__); print(torch.cuda.get_device_name(), torch.cuda.get_device_properties(0))"; \
  } > "$OUT/env.txt" 2>&1
  status env $?
fi

if has report; then
  # sm_90a compile report on this machine's triton (the GPU image's); compiles only, no GPU use.
  run "compile report" 60 python3 -m infgen.kernels.report --jobs "$(nproc)" --out "$OUT/compile_report" \
      > "$OUT/compile_report.log" 2>&1
  grep -A 12 "^## Check" "$OUT/compile_report/compile_report.md" 2>/dev/null
fi

if has tests; then
  # One pytest run per file, each with its own limit and JUnit XML, so a slow file loses neither
  # the others nor its own summary line. The kernel files run their small cases on CUDA too.
  mkdir -p "$OUT/tests"
  for f in tests/test_kernels_attention.py tests/test_kernels_groupnorm.py tests/test_kernels_inpe.py \
           tests/test_kernels_attention_d512.py tests/test_triton_backend.py; do
    n=$(basename "$f" .py)
    # test_triton_backend builds the paper preset several times (the d512 dispatch test: 3 builds)
    limit=70; [ "$n" = test_triton_backend ] && limit=150
    run "$n" "$limit" python3 -m pytest -q -p no:cacheprovider "$f" --junitxml "$OUT/tests/$n.xml" \
        >> "$OUT/tests.log" 2>&1
  done
  # Everyone else's gpu-marked tests; a file importing a package this image lacks must not stop
  # the others (--continue-on-collection-errors).
  run "other gpu tests" 60 python3 -m pytest -q -m gpu -p no:cacheprovider --continue-on-collection-errors tests \
      --ignore=tests/test_kernels_attention.py --ignore=tests/test_kernels_groupnorm.py \
      --ignore=tests/test_kernels_inpe.py --ignore=tests/test_triton_backend.py \
      --ignore=tests/test_kernels_attention_d512.py \
      --ignore=tests/test_kernels_report.py --junitxml "$OUT/tests/other_gpu.xml" >> "$OUT/tests.log" 2>&1
  grep -E "passed|failed|error" "$OUT/tests.log" | tail -n 12
fi

if has native; then
  # native/ (#16): CMake AOT-compiles the kernels with this machine's triton into libinfgen_kernels
  # and runs its ctest, the GPU test included (native/tests/gpu_kernels.py: the AOT attention and
  # INPE through the C API against float64 host references). Built outside the repo copy.
  run native 150 bash -c 'cmake -S . -B /tmp/infgen-native -DPython3_EXECUTABLE="$(command -v python3)" \
      -DINFGEN_AOT_JOBS=8 && cmake --build /tmp/infgen-native -j 8 && \
      ctest --test-dir /tmp/infgen-native --output-on-failure' > "$OUT/native.log" 2>&1
  tail -n 15 "$OUT/native.log"
fi

if has kernels; then
  run kernels 120 python3 benchmarks/kernels.py --out "$OUT/kernels.json" > "$OUT/kernels.log" 2>&1
  tail -n 20 "$OUT/kernels.log"
fi

if has d512; then
  # The scores-once head-dim-512 kernel (kernels/attention_d512.py) vs the tl.dot kernel and SDPA,
  # with its ablations; JSON written after every case.
  run d512 120 python3 benchmarks/attention_d512.py --no-sdpa-above 65536 --out "$OUT/d512.json" > "$OUT/d512.log" 2>&1
  tail -n 20 "$OUT/d512.log"
fi

if has decode; then
  # One process per size: each writes its own profile.json (after every row), so a slow 4K torch
  # row loses only 4K. The profiler needs neither tqdm nor matplotlib (the GPU image has neither).
  for size in 1024x1024 2048x2048 4096x4096; do
    run "decode $size" $([ "$size" = 4096x4096 ] && echo 90 || echo 50) \
      python3 -m infgen.runtime profile --preset paper --device cuda --size "$size" --backend torch triton --dtype bf16 \
        --baselines none --warmup 2 --iters 5 --no-progress --out "$OUT/decode/$size" >> "$OUT/decode.log" 2>&1
  done
  tail -n 12 "$OUT/decode.log"
fi
grep "== " "$OUT/env.txt"
