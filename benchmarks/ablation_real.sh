#!/usr/bin/env bash
# Table I(a) on real faces at a small, equal budget: 400 iterations x batch 8, seed 0, 256 px, ImageNet MobileNetV2.
set -u
cd "$(dirname "$0")/.."
for v in baseline full adaptive adaptive_graph; do
  start=$(date +%s)
  .venv/bin/agrnet train --config celebamask_mini ablation=$v iterations=400 val_every=400 checkpoint_every=200 out_dir=runs/ablation_$v > runs/ablation_$v.log 2>&1
  end=$(date +%s)
  .venv/bin/agrnet evaluate --checkpoint runs/ablation_$v/best.pt --split test --json benchmarks/results/ablation_real/$v.json > runs/ablation_${v}_eval.log 2>&1
  echo "$v train_seconds=$((end-start)) $(grep -a -o 'val mean F1 [0-9.]*' runs/ablation_$v.log | tail -1)" >> runs/ablation_summary.txt
done
