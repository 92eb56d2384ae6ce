#!/usr/bin/env bash
# Task 1 of the small image preset again for seeds 1 and 2 (together), then 0, scored with 1,500 generated images at
# steps 6,000, 7,000 and 8,000; each run is stopped once its Task-1 cache is written (the end of Task 1). From the
# repository root (about 22 min on 2 cores); then task1_recheck.py compares with the 12 runs (runs/imagenet-small):
#     bash results/imagenet_small_cpu/task1_recheck.sh
#     python results/imagenet_small_cpu/task1_recheck.py runs/t1recheck runs/imagenet-small > \
#         results/imagenet_small_cpu/task1_recheck.md
# D (output folder) and EXTRA (more flags) vary it, e.g. the weight-average pilot:
#     D=runs/t1ema EXTRA="--ema 0.999" bash results/imagenet_small_cpu/task1_recheck.sh
set -uo pipefail
D=${D:-runs/t1recheck}; EXTRA=${EXTRA:-}; mkdir -p $D
one() {
  python train_imagenet.py --method finetune --seed "$1" --preset small --curve 6000,7000,8000 --curve-samples 1500 \
    --task1-cache $D/task1-s$1.pt --out $D/s$1 --no-progress $EXTRA > $D/s$1.log 2>&1 &
  local pid=$!
  while kill -0 $pid 2>/dev/null; do
    if [[ -f $D/task1-s$1.pt ]]; then sleep 3; kill $pid; break; fi
    sleep 2
  done
  wait $pid
}
one 1 & one 2 & wait
one 0
