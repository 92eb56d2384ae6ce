#!/usr/bin/env bash
# Issue 11's measurements and the reduced-scale GPU runs, for one NVIDIA H100 (16 CPU cores). Run from the repository
# root with metaworld/mujoco/gymnasium installed. Usage: bash gpu_runs.sh measure|gpu [seed]|cw10|shapes
#   measure every row of issue 11's table against today's path, and compiled == eager on CUDA, within a deadline
#   cw10, shapes   three methods at once, the reduced runs of results/h100_cw10_reduced and h100_shapes_reduced
# The H100 baseline (code of commit fc5f99e, 2026-11-24) is in results/h100_bench/README.md; CPU measurements of the
# same commands are in results/cpu_speed/README.md. Write down the device, torch version and date with the numbers.
# On the lent H100 (2026-11-25) two calls that ran the old `check` and `bench` through pipes (`| tee`) returned
# nothing after 600 s. On the H200 (2026-11-30, results/h200_bench) `measure` ran within its deadline; there
# MUJOCO_GL=egl makes `import mujoco` fail (no libEGL in the image), so leave MUJOCO_GL unset (nothing here
# renders), and give compiling the paper-size UNets minutes: 200 s did not suffice for four compiled tr rows.
set -u
export PYTHONUNBUFFERED=1
mkdir -p runs
case "${1:-}" in
measure)
  # Every measurement of issue 11 in one call of the device tool, in order of value, each step under `timeout`
  # with what is left before DEADLINE seconds (default 480), all output appended to LOG (default
  # runs/measure.log); ONLY="step ..." runs the named steps alone, CHECK narrows the check's -k expression.
  # On the device: LOG=$OUT/measure.log bash gpu_runs.sh measure
  LOG=${LOG:-runs/measure.log}; export TQDM_DISABLE=1
  step() {  # step NAME LIMIT COMMAND...: run COMMAND for at most LIMIT seconds (less if the deadline is nearer)
    local name=$1 limit=$2; shift 2
    [[ -z "${ONLY:-}" || " $ONLY " == *" $name "* ]] || return 0  # ONLY="name ...": these steps alone
    local left=$(( ${DEADLINE:-480} - SECONDS ))
    if (( left < 15 )); then echo "## $name: skipped, ${left}s left before the deadline" >> "$LOG"; return; fi
    (( limit > left )) && limit=$left
    echo "## $name (limit ${limit}s, at ${SECONDS}s): $*" >> "$LOG"
    local t0=$SECONDS; timeout -k 5 "$limit" "$@" >> "$LOG" 2>&1 < /dev/null
    echo "## $name: exit $?, ${SECONDS}s - ${t0}s" >> "$LOG"
    pkill -9 -f _inductor/compile_worker 2> /dev/null  # compile workers left by a killed step hold the log open
  }
  b="python bench.py step --device cuda --no-second-order"
  step probe 60 bash -c 'nvidia-smi -L; python -c "import torch, mujoco, metaworld; print(torch.__version__,
    torch.version.cuda, torch.cuda.get_device_name(), mujoco.__version__)"'
  # training step per method, eager (float32 / TF32, bf16, per-step host sync): issue rows 1 and 3
  step cw10-paper-eager 60 $b --model unet1d_paper --batch 256 --steps 3 --chain 5 --methods finetune,replay,tr \
    --bf16 --sync
  step imagenet-paper-eager 60 $b --model unet2d_paper --batch 128 --steps 3 --chain 3 --methods finetune,replay,tr \
    --bf16
  # where the time of one eager tr step goes (profiling on the device is slow: one step per row, in its own step)
  step cw10-paper-profile 60 $b --model unet1d_paper --batch 256 --steps 1 --methods tr --bf16 --profile
  # rank-1 Fisher, batched vs the one-sample loop (row 4)
  step fisher 60 python bench.py fisher --model unet1d_paper --samples 512 --batch 128 --device cuda
  # compiled == eager on CUDA, all six methods, float64 (the fast path's correctness)
  step check 150 python -m pytest -q -p no:cacheprovider -m slow tests/test_speed.py -k "${CHECK:-compiled}" -s
  # the step compiled with CUDA graphs (reduce-overhead), float32 and bf16 (rows 1-3)
  step cw10-paper-compiled 200 $b --model unet1d_paper --batch 256 --steps 5 --chain 5 --methods tr --bf16 \
    --compile reduce-overhead --profile
  step cw10-paper-compiled-default 90 $b --model unet1d_paper --batch 256 --steps 5 --chain 5 --methods tr \
    --compile default
  step imagenet-paper-compiled 150 $b --model unet2d_paper --batch 128 --steps 5 --chain 3 --methods tr --bf16 \
    --compile reduce-overhead
  step cw10-small-compiled 120 $b --model unet1d_small --batch 32 --steps 5 --chain 10 --methods finetune,tr \
    --compile reduce-overhead
  # CW10 evaluation: one episode at a time vs batched vs 8 env workers; demo collection with 16 workers (rows 5-6)
  step cw10-rollouts 120 python train_cw10.py --preset small --bench --device cuda --tasks hammer --rollout-batch 20 \
    --ddim-steps 10 --env-workers 8 --workers 16 --compile reduce-overhead --no-progress
  echo "## done at ${SECONDS}s" >> "$LOG" ;;
gpu)  # the `gpu` preset over all ten tasks: finetune, replay and tr at once, seed ${2:-0}
  mkdir -p runs/gpu
  for m in finetune replay tr; do
    python train_cw10.py --preset gpu --method $m --seed ${2:-0} --device cuda --no-progress --data-dir runs/cwdata \
      --out runs/gpu/$m-s${2:-0} > runs/gpu/$m-s${2:-0}.log 2>&1 &
  done; wait ;;
cw10)   # three methods at once, as results/h100_cw10_reduced (then: stopped after 480 s); compile auto =
  # reduce-overhead on CUDA (its compilation counts in the wall time), 4 env workers and 5 demo workers each
  mkdir -p runs/h100_cw10
  for m in finetune replay tr; do
    timeout 480 python train_cw10.py --preset small --method $m --seed 0 --device cuda --no-progress \
      --steps-per-task 300 --batch-size 64 --demos-per-task 50 --eval-episodes 20 --rollout-batch 20 --ddim-steps 10 \
      --replay-rollouts 10 --fisher-samples 1000 --workers 5 --env-workers 4 --data-dir /tmp/cwdata_$m \
      --out runs/h100_cw10/$m > runs/h100_cw10/$m.log 2>&1 &
  done; wait ;;
shapes) # three methods at once, as results/h100_shapes_reduced (then: stopped after 290 s)
  mkdir -p runs/h100_shapes2
  for m in finetune replay tr; do
    timeout 290 python train_imagenet.py --dataset shapes --method $m --seed 0 --device cuda --no-progress \
      --num-tasks 3 --classes-per-task 50 --model small --steps-per-task 400 --shapes-train-per-class 300 \
      --fisher-samples 1000 --curve end --checkpoint-every 200 \
      --out runs/h100_shapes2/$m > runs/h100_shapes2/$m.log 2>&1 &
  done; wait ;;
*) echo "usage: bash gpu_runs.sh measure|gpu [seed]|cw10|shapes" >&2; exit 2 ;;
esac
