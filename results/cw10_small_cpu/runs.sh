#!/usr/bin/env bash
# The 12 runs of results/cw10_small_cpu/ at the `small` preset (CW10's tasks 6-10), two at a time with one torch
# thread each, then Table 1, Table 2 and Figure 2. From the repository root:
#     bash results/cw10_small_cpu/runs.sh   # 12 runs: 1 h 45 min on 2 cores (21:38-23:21); λ runs: ~40 min more
# Each run: /usr/bin/time -v (wall time, peak memory) around timed_run.py, which runs train_cw10.main unchanged and
# adds timing.json (seconds in training steps and in evaluation rollouts).
set -euo pipefail
mkdir -p runs/cw10-small
python -c "import train_cw10 as t, cw10_data; cw10_data.ensure_demos(t.Config(**t.PRESETS['small']), \
t.task_list(t.Config(**t.PRESETS['small'])))"  # demos once, before two runs race for the cache
one() {  # method seed
  /usr/bin/time -v -o "runs/cw10-small/$1-s$2.time" python results/cw10_single_task_cpu/timed_run.py --method "$1" \
    --seed "$2" --preset small --threads 1 --no-progress --out "runs/cw10-small/$1-s$2" \
    > "runs/cw10-small/$1-s$2.log" 2>&1
}
export -f one
printf "%s\n" "vrmcl 0" "tr 0" "ftml 0" "tr 1" "tr 2" "replay 0" "replay 1" "replay 2" "ewc 0" "finetune 0" \
  "finetune 1" "finetune 2" | xargs -P 2 -L 1 bash -c 'one "$0" "$1"'
python metrics.py aggregate runs/cw10-small/*-s? --out results/cw10_small_cpu
# the lambda sweep (tr, seed 0; lambda.md), then the tables and each run's files under results/cw10_small_cpu
mkdir -p runs/cw10-small-lam
for L in 120 1200 12000; do
  /usr/bin/time -v -o "runs/cw10-small-lam/tr-lam$L.time" python results/cw10_single_task_cpu/timed_run.py \
    --method tr --seed 0 --preset small --lam "$L" --threads 1 --no-progress --out "runs/cw10-small-lam/tr-lam$L" \
    > "runs/cw10-small-lam/tr-lam$L.log" 2>&1
done
R=results/cw10_small_cpu
python results/cw10_small_cpu/runs_table.py runs/cw10-small/*-s? > $R/runs.md
python results/imagenet_small_cpu/terms.py runs/cw10-small/tr-s? > $R/terms.md
python results/imagenet_small_cpu/lambda/table.py runs/cw10-small/replay-s0 runs/cw10-small/tr-s0 \
  runs/cw10-small-lam/tr-lam{120,1200,12000} > $R/lambda.md
for d in runs/cw10-small/*-s? runs/cw10-small-lam/tr-lam*[0-9]; do
  dest=$R/runs/$(basename "$d"); mkdir -p "$dest"
  cp "$d"/{config.json,metrics.jsonl,summary.json,summary.md,figure2.png,timing.json} "$dest"/
  grep -E "Elapsed|Maximum resident" "$d.time" | sed 's/^\s*//' > "$dest/time.txt"
done
