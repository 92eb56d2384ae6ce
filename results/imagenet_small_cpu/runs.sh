#!/usr/bin/env bash
# The 12 runs of results/imagenet_small_cpu/, two at a time (one torch thread each, the preset's), then the tables,
# Figure 2, the method comparison picture and the Eq. 9 term table. From the repository root:
#     bash results/imagenet_small_cpu/runs.sh        # about 2 h 45 min on 2 cores
set -euo pipefail
mkdir -p runs/imagenet-small
one() {  # method seed
  /usr/bin/time -v -o "runs/imagenet-small/$1-s$2.time" python train_imagenet.py --method "$1" --seed "$2" \
    --preset small --out "runs/imagenet-small/$1-s$2" --no-progress > "runs/imagenet-small/$1-s$2.log" 2>&1
}
export -f one
printf "%s\n" "tr 0" "finetune 0" "replay 0" "tr 1" "replay 1" "finetune 1" "tr 2" "replay 2" "finetune 2" \
  "ewc 0" "ftml 0" "vrmcl 0" | xargs -P 2 -L 1 bash -c 'one "$0" "$1"'
python metrics.py aggregate runs/imagenet-small/*-s? --out results/imagenet_small_cpu
python train_imagenet.py --compare runs/imagenet-small/*-s? --out results/imagenet_small_cpu/task1_methods.png
python results/imagenet_small_cpu/terms.py runs/imagenet-small/tr-s? > results/imagenet_small_cpu/terms.md
