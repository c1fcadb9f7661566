#!/usr/bin/env bash
# The one documented command for a lent GPU: runs scripts/gpu_lease.py (its header has the steps,
# their limits, the budget, the outputs and what has run on a GPU: nothing yet).
#
#   first call:  run(command="bash scripts/gpu_check.sh", timeout_s=600)
#   next call:   copy the first call's lease.json (under its files_at) to out/lease.json here, then
#                run(command="RESUME=out/lease.json BUDGET=240 bash scripts/gpu_check.sh",
#                    carry=["out/lease.json"], timeout_s=600)
#   by hand:     OUT=out/gpu bash scripts/gpu_check.sh; then OUT=out/gpu RESUME=1 bash scripts/gpu_check.sh
#   CPU:         DRY_RUN=1 OUT=out/dry bash scripts/gpu_check.sh   (stand-ins; tests/test_gpu_lease.py)
#
# Environment: OUT (default out/gpu; the device tool sets it), BUDGET (seconds, default 540),
# RESUME (1 or a lease.json), STEPS (names, to restrict a call), INFGEN_D512=0 (the d512 kernel's
# kill switch), DRY_RUN=1, PYTHON (default python3). Paths are relative to the current directory.
exec "${PYTHON:-python3}" "$(dirname "$0")/gpu_lease.py" "$@"
