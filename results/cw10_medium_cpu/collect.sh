#!/usr/bin/env bash
# Tables, figures and each run's files of results/cw10_medium_cpu/ from the finished runs under runs/cw10-medium
# (after runs.sh). From the repository root:  bash results/cw10_medium_cpu/collect.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
R=results/cw10_medium_cpu
runs=$(for d in runs/cw10-medium/*-s?; do if [ -f "$d/timing.json" ]; then echo "$d"; fi; done)  # finished only
python $R/add_task_ends.py $runs >/dev/null  # runs made before the task end was always a curve point
python metrics.py aggregate $runs --out $R                       # Table 1, Table 2, Figure 2 (mean +- s.e.)
python results/cw10_small_cpu/runs_table.py $runs > $R/runs.md    # each run: diagonal of R, SR, F, wall time
python results/imagenet_small_cpu/terms.py $(echo "$runs" | grep '/tr-s') > $R/terms.md  # ||C|| / ||A||, Fisher
python $R/collapse.py $runs > $R/collapse.md  # has a final network collapsed to a constant output?
python train_cw10.py --compare $(echo "$runs" | grep -- '-s0$') --out $R/task1_paths.png  # Task 1 from above
for d in $runs; do
  dest=$R/runs/$(basename "$d"); mkdir -p "$dest"
  cp "$d"/{config.json,metrics.jsonl,summary.json,summary.md,figure2.png,timing.json,task1_paths.png} "$dest"/
  grep -E "Elapsed|Maximum resident" "$d.time" | sed 's/^\s*//' > "$dest/time.txt"
done
