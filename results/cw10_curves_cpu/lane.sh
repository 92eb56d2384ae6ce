#!/usr/bin/env bash
# One lane of single-task CW10 curves: each task of CW10 trained alone from scratch to 2,000 steps (cosine over
# 2,000), success over 20 episodes at 250/500/1,000/2,000 steps. One torch thread; run one lane per core.
#   bash results/cw10_curves_cpu/lane.sh NAME "EXTRA FLAGS" TASK [TASK ...]
# e.g. bash results/cw10_curves_cpu/lane.sh x0 "--prediction sample" hammer push-wall
set -euo pipefail
cd "$(dirname "$0")/../.."
name=$1; extra=$2; shift 2
for task in "$@"; do
  python results/cw10_single_task_cpu/timed_run.py --method finetune --tasks "$task" --model small \
    --batch-size 32 --lr 3e-3 --lr-schedule cosine --lr-warmup 50 --demos-per-task 50 --steps-per-task 2000 \
    --curve 250,500,1000,2000 --ddim-steps 10 --curve-episodes 20 --eval-episodes 20 --rollout-batch 20 \
    --log-every 50 --checkpoint-every 500 --threads 1 --workers 1 --no-progress $extra \
    --out "runs/curves/${name}_${task}"
done
