#!/usr/bin/env bash
# The single-task learning curves of README.md, one command per row (Task 1 of shapes, finetune = every method
# on Task 1; 1 torch thread each). Run from the repository root: bash results/imagenet_curves_cpu/curves.sh
# The runs of 2026-11-29 were made with the former small preset; the flags below pin every value that differs
# from today's small preset, so these commands give the same numbers.
set -euo pipefail
common="--method finetune --preset small --num-tasks 1 --heldout-per-class 30 --allow-rank-deficient-fid --no-progress"
python train_imagenet.py $common --model tiny --classes-per-task 10 --lr 1e-3 --ddim-steps 10 \
  --steps-per-task 4000 --curve 250,500,1000,2000,4000 --out runs/curves/tiny-16
python train_imagenet.py $common --model mini --classes-per-task 10 --lr 1e-3 --ddim-steps 10 \
  --steps-per-task 4000 --curve 250,500,1000,2000,4000 --out runs/curves/mini-16
python train_imagenet.py $common --model mini --classes-per-task 10 --lr 2e-3 --ddim-steps 20 \
  --steps-per-task 2000 --curve 500,1000,1500,2000 --out runs/curves/mini-16-lr2e-3
python train_imagenet.py $common --model mini --classes-per-task 10 --lr 4e-3 --ddim-steps 20 \
  --steps-per-task 4000 --curve 250,500,1000,1500,2000,3000,4000 --out runs/curves/mini-16-lr4e-3-4k
python train_imagenet.py $common --model mini --classes-per-task 5 --lr 4e-3 --ddim-steps 20 \
  --steps-per-task 2000 --curve 250,500,1000,1500,2000 --out runs/curves/mini-16-lr4e-3-c5
python results/imagenet_curves_cpu/ddim_probe.py runs/curves/tiny-16 10,20,50,100 tiny-16_ddim.png
python results/imagenet_curves_cpu/ddim_probe.py runs/curves/mini-16 10,20,50 mini-16_ddim.png
