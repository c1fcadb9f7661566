#!/usr/bin/env bash
# One device call: environment, CUDA tests, kernel benchmarks, end-to-end decode latency.
#
#   device tool:  run(command="bash scripts/gpu_check.sh", timeout_s=600)
#   by hand:      OUT=/tmp/gpu_out bash scripts/gpu_check.sh
#
# Writes under $OUT (at most 8 files come back): env.txt, tests.log, native.log, kernels.json,
# kernels.log, decode.log, decode/decode.json (or decode/profile.json + profile.png from runtime.profile).
# Each step has its own timeout, so a hang loses only that step. STEPS selects steps
# (default "env tests native kernels decode"); e.g. STEPS="kernels" bash scripts/gpu_check.sh.
# Total budget: 10 minutes per device command; the step limits below sum to about 12.5, so a
# run that hits several limits needs two calls (e.g. STEPS="env tests native", then the rest).
set -u
OUT=${OUT:-gpu_out}
STEPS=${STEPS:-"env tests native kernels decode"}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET            # compiled kernels on CUDA, never the interpreter
cd "$(dirname "$0")/.."
has() { [[ " $STEPS " == *" $1 "* ]]; }
status() { echo "== $1: rc=$2 ($(date +%T))" | tee -a "$OUT/env.txt"; }

if has env; then
  { date -u; git rev-parse --short HEAD 2>/dev/null; nvidia-smi; \
    python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__); print(torch.cuda.get_device_name(), torch.cuda.get_device_properties(0))"; \
  } > "$OUT/env.txt" 2>&1
  status env $?
fi

if has tests; then
  # The kernel and backend tests run on CUDA when it is present (small shapes + gpu-marked
  # large ones); then everyone else's gpu-marked tests.
  timeout 200 python -m pytest -q -p no:cacheprovider tests/test_kernels_attention.py \
      tests/test_kernels_groupnorm.py tests/test_kernels_inpe.py tests/test_triton_backend.py \
      > "$OUT/tests.log" 2>&1
  status "kernel tests" $?
  timeout 60 python -m pytest -q -m gpu -p no:cacheprovider tests \
      --ignore=tests/test_kernels_attention.py --ignore=tests/test_kernels_groupnorm.py \
      --ignore=tests/test_kernels_inpe.py --ignore=tests/test_triton_backend.py \
      >> "$OUT/tests.log" 2>&1
  status "other gpu tests" $?
  tail -n 15 "$OUT/tests.log"
fi

if has native; then
  # native/ (#16): CMake AOT-compiles the kernels with this machine's triton into libinfgen_kernels
  # and runs its ctest, the GPU test included (native/tests/gpu_kernels.py: the AOT attention and
  # INPE through the C API against float64 host references). Build outside the repo copy.
  timeout 180 bash -c 'cmake -S . -B /tmp/infgen-native -DPython3_EXECUTABLE="$(command -v python3)" \
      -DINFGEN_AOT_JOBS=8 && cmake --build /tmp/infgen-native -j 8 && \
      ctest --test-dir /tmp/infgen-native --output-on-failure' > "$OUT/native.log" 2>&1
  status native $?
  tail -n 15 "$OUT/native.log"
fi

if has kernels; then
  timeout 150 python benchmarks/kernels.py --out "$OUT/kernels.json" > "$OUT/kernels.log" 2>&1
  status kernels $?
  tail -n 20 "$OUT/kernels.log"
fi

if has decode; then
  SIZES="1024x1024 2048x2048 4096x4096"
  if python -c "import runtime.profile" 2>/dev/null; then
    timeout 170 python -m runtime.profile --preset paper --sizes $SIZES --backends torch,triton \
        --baselines none --dtype bf16 --warmup 2 --iters 5 --no-progress --out "$OUT/decode" \
        > "$OUT/decode.log" 2>&1
  else
    timeout 170 python benchmarks/decode.py --preset paper --sizes $SIZES --backends torch,triton \
        --dtype bf16 --warmup 2 --iters 5 --out "$OUT/decode" > "$OUT/decode.log" 2>&1
  fi
  status decode $?
  tail -n 12 "$OUT/decode.log"
fi
grep "== " "$OUT/env.txt"
