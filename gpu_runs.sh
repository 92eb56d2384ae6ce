#!/usr/bin/env bash
# Issue 11's measurements and the reduced-scale GPU runs, for one NVIDIA H100 (16 CPU cores). Run from the repository
# root with metaworld/mujoco/gymnasium installed. Usage: bash gpu_runs.sh check|bench|gpu [seed]|cw10|shapes
#   check   the fast path is correct on this GPU: compiled == eager for all six methods (CUDA graphs)
#   bench   every row of issue 11's table, each against today's path in the same command
#   cw10, shapes   three methods at once, the reduced runs of results/h100_cw10_reduced and h100_shapes_reduced
# The H100 baseline (code of commit fc5f99e, 2026-11-24) is in results/h100_bench/README.md; CPU measurements of the
# same commands are in results/cpu_speed/README.md. Write down the device, torch version and date with the numbers.
# On the lent H100 (2026-11-25) two calls that ran `check` and `bench` through pipes (`| tee`) returned nothing
# after 600 s and spent the session's device time: start with a one-minute probe (import torch, metaworld; one
# compiled step), set MUJOCO_GL=egl, send output to files (no pipes: inductor's compile workers inherit them),
# and launch anything longer than a few minutes with setsid, then poll.
set -u
export PYTHONUNBUFFERED=1
mkdir -p runs
case "${1:-}" in
check)
  # tests/test_speed.py::test_compiled_step_equals_eager on CUDA: torch.compile mode "reduce-overhead" (CUDA
  # graphs), float64, three steps of every method against the eager step (tolerance 2e-6). If it fails, runs must
  # use --compile default or --compile off; say which in the README.
  python -m pytest -q -m slow tests/test_speed.py -k compiled -s ;;
bench)
  # 1. demo collection (issue row 6): 10 tasks x 100 demos with 16 workers, timed; fills runs/cwdata for `gpu`
  /usr/bin/time -f "demo collection, 10 tasks x 100 demos, 16 workers: %e s wall" python -c "
import dataclasses, train_cw10 as t, cw10_data
cfg = dataclasses.replace(t.Config(**t.PRESETS['gpu']), workers=16, data_dir='runs/cwdata', progress=False)
for task in cw10_data.CW10: cw10_data.load_demos(cfg, task)"
  # 2. training step of each method (issue rows 1-3), interleaved rounds, one process per model:
  #   "<m>" eager (logs read every log_every steps), "<m> +compile" compile_denoiser(reduce-overhead: CUDA graphs),
  #   "<m> +sync" eager reading every logged value after every step (the per-step host sync of the old loop)
  python meta_baselines.py --bench --device cuda --model unet1d_paper --batch 256 --steps 20 --no-second-order \
    --methods finetune,replay,tr --compile reduce-overhead --sync
  python meta_baselines.py --bench --device cuda --model unet1d_small --batch 32 --steps 30 --no-second-order \
    --methods finetune,tr --compile reduce-overhead
  python meta_baselines.py --bench --device cuda --model unet1d_small --batch 256 --steps 30 --no-second-order \
    --methods finetune,replay,tr --compile reduce-overhead
  python meta_baselines.py --bench --device cuda --model unet2d_paper --batch 128 --steps 20 --no-second-order \
    --methods finetune,tr --compile reduce-overhead
  # 3. rank-1 Fisher (issue row 4): batched (vmap) vs the one-sample loop, paper 1D UNet
  python fisher.py --model unet1d_paper --samples 512 --batch 128 --device cuda
  # 4. DDIM-50 sampling images/s, ImageNet paper UNet, eager vs compiled (item 3)
  for c in off reduce-overhead; do
    python train_imagenet.py --bench --device cuda --compile $c --sample-batch 256 --no-progress
  done
  # 5. CW10 evaluation (issue row 5): 50 hammer episodes x 200 steps, DDIM 10, small model, compiled: one at a
  #    time, batched in this process, batched with 8 env worker processes (same successes checked); demos/s
  python train_cw10.py --preset small --bench --device cuda --tasks hammer --rollout-batch 50 --ddim-steps 10 \
    --env-workers 8 --workers 16 --compile reduce-overhead --no-progress ;;
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
*) echo "usage: bash gpu_runs.sh check|bench|gpu [seed]|cw10|shapes" >&2; exit 2 ;;
esac
