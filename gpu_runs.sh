#!/usr/bin/env bash
# The H100 measurements and reduced-scale runs quoted in README.md "Measured performance", exactly as they were
# run on 2026-11-24 (one NVIDIA H100 80GB, 16 CPU cores, torch 2.11.0+cu130). Run from the repository root with
# metaworld/mujoco/gymnasium installed. Usage: bash gpu_runs.sh bench|cw10|shapes
set -u
export PYTHONUNBUFFERED=1
mkdir -p runs
case "${1:-}" in
bench)
  python unet.py --bench --device cuda --reps 20 --models unet1d_paper unet2d_paper --batch-1d 512 --batch-2d 128
  python fisher.py --model unet1d_paper --samples 512 --batch 128 --device cuda --skip-loop
  python fisher.py --model unet2d_paper --samples 256 --batch 64 --device cuda --skip-loop
  python meta_baselines.py --bench --device cuda --model unet1d_paper --batch 256 --steps 20
  python meta_baselines.py --bench --device cuda --model unet2d_paper --batch 128 --steps 20
  python train_imagenet.py --bench --device cuda --bench-steps 20 --bench-methods finetune,replay,tr \
    --sample-batch 500 --bench-fid-images 2000 --no-progress
  python train_cw10.py --preset small --bench --bench-steps 5 --bench-presets paper,small --device cuda \
    --workers 16 --tasks hammer --ddim-steps 10 --progress false ;;
cw10)   # three methods at once; each process was stopped after 480 s (timeout), see README
  mkdir -p runs/h100_cw10
  for m in finetune replay tr; do
    timeout 480 python train_cw10.py --preset small --method $m --seed 0 --device cuda --progress false \
      --steps-per-task 300 --batch-size 64 --demos-per-task 50 --eval-episodes 20 --rollout-batch 20 --ddim-steps 10 \
      --replay-rollouts 10 --fisher-samples 1000 --workers 5 --data-dir /tmp/cwdata_$m \
      --out runs/h100_cw10/$m > runs/h100_cw10/$m.log 2>&1 &
  done; wait ;;
shapes) # three methods at once; each process was stopped after 290 s (timeout), see README
  mkdir -p runs/h100_shapes2
  for m in finetune replay tr; do
    timeout 290 python train_imagenet.py --dataset shapes --method $m --seed 0 --device cuda --no-progress \
      --num-tasks 3 --classes-per-task 50 --model small --steps-per-task 400 --shapes-train-per-class 300 \
      --fisher-samples 1000 --curve end --checkpoint-every 200 \
      --out runs/h100_shapes2/$m > runs/h100_shapes2/$m.log 2>&1 &
  done; wait ;;
*) echo "usage: bash gpu_runs.sh bench|cw10|shapes" >&2; exit 2 ;;
esac
