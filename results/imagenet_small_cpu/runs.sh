#!/usr/bin/env bash
# The 12 runs of results/imagenet_small_cpu/, two at a time (one torch thread each, the preset's), then the tables,
# Figure 2, the method comparison picture and the Eq. 9 term table. From the repository root:
#     bash results/imagenet_small_cpu/runs.sh        # about 2 h on 2 cores
# finetune, ewc, replay and tr train Task 1 alike, so they share it through --task1-cache: each seed's tr run
# trains Task 1 and writes runs/imagenet-small/task1-s<seed>.pt; the other three start from that file (the same
# numbers as training Task 1 themselves: tests/test_imagenet.py). ftml and vrmcl train Task 1 their own way.
set -euo pipefail
mkdir -p runs/imagenet-small
one() {  # method seed
  local cache=() dir=runs/imagenet-small
  case $1 in finetune|ewc|replay|tr) cache=(--task1-cache "$dir/task1-s$2.pt");; esac
  if [[ $1 != tr && ${#cache[@]} -gt 0 ]]; then  # wait for this seed's tr run to write Task 1
    while [[ ! -f $dir/task1-s$2.pt ]]; do
      [[ -f $dir/tr-s$2.time ]] && { echo "tr seed $2 ended without writing its Task 1 cache" >&2; exit 1; }
      sleep 20
    done
  fi
  /usr/bin/time -v -o "$dir/$1-s$2.time" python train_imagenet.py --method "$1" --seed "$2" --preset small \
    "${cache[@]}" --out "$dir/$1-s$2" --no-progress > "$dir/$1-s$2.log" 2>&1
}
export -f one
printf "%s\n" "tr 0" "ftml 0" "tr 1" "vrmcl 0" "tr 2" "replay 0" "replay 1" "replay 2" "ewc 0" "finetune 0" \
  "finetune 1" "finetune 2" | xargs -P 2 -L 1 bash -c 'one "$0" "$1"'
python metrics.py aggregate runs/imagenet-small/*-s? --out results/imagenet_small_cpu
python train_imagenet.py --compare runs/imagenet-small/*-s? --out results/imagenet_small_cpu/task1_methods.png
python results/imagenet_small_cpu/terms.py runs/imagenet-small/tr-s? > results/imagenet_small_cpu/terms.md
python results/imagenet_small_cpu/task1_check.py runs/imagenet-small/*-s? > results/imagenet_small_cpu/task1_check.md
