#!/usr/bin/env bash
# The runs of results/cw10_medium_cpu/ at the `medium` preset (all ten CW10 tasks, paper order), two at a time with
# one torch thread each, then Table 1, Table 2, Figure 2 and the Task-1 paths. From the repository root:
#     bash results/cw10_medium_cpu/runs.sh "tr 0" "replay 0"       # the pairs to run (default: all ten)
# Each run: /usr/bin/time -v (wall time, peak memory) around timed_run.py, which runs train_cw10.main unchanged and
# adds timing.json (seconds in training steps and in evaluation rollouts). A stopped run resumes when rerun.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p runs/cw10-medium
python -c "import train_cw10 as t, cw10_data; c = t.Config(**t.PRESETS['medium']); cw10_data.ensure_demos(c, \
t.task_list(c))"  # demos once, before two runs race for the cache
one() {  # method seed
  /usr/bin/time -v -o "runs/cw10-medium/$1-s$2.time" python results/cw10_single_task_cpu/timed_run.py --method "$1" \
    --seed "$2" --preset medium --threads 1 --no-progress --out "runs/cw10-medium/$1-s$2" \
    >> "runs/cw10-medium/$1-s$2.log" 2>&1
}
export -f one
if [ $# -eq 0 ]; then
  set -- "tr 0" "replay 0" "tr 1" "replay 1" "tr 2" "replay 2" "finetune 0" "ewc 0" "ftml 0" "vrmcl 0"
fi
printf "%s\n" "$@" | xargs -P 2 -L 1 bash -c 'one "$0" "$1"'
