#!/usr/bin/env bash
# Table I(a) on real faces at one equal budget: each ROW:SEED is trained with
#   agrnet train --config celebamask_mini ablation=ROW seed=SEED iterations=ITERATIONS
# (batch 8, 256 px, ImageNet MobileNetV2, its own Table I(b) losses; one val check at the end, so best.pt is
# the last step), then scored with `agrnet evaluate --split test`. ROW baseline_full_loss is the baseline
# trained with the full objective's weights (ablation_losses=false), to separate the loss from the modules.
# Usage: benchmarks/ablation_real.sh ITERATIONS ROW:SEED [ROW:SEED ...]
set -u
cd "$(dirname "$0")/.."
iterations=$1; shift
results=benchmarks/results/ablation_real/it$iterations
mkdir -p "$results" runs
for spec in "$@"; do
  row=${spec%:*}; seed=${spec#*:}
  overrides="ablation=$row"
  [ "$row" = baseline_full_loss ] && overrides="ablation=baseline ablation_losses=false"
  run=runs/ablation_it${iterations}_${row}_s$seed
  start=$(date +%s)
  if ! .venv/bin/agrnet train --config celebamask_mini $overrides seed=$seed iterations=$iterations \
      val_every=$iterations checkpoint_every=200 out_dir=$run > $run.log 2>&1; then
    echo "$row seed=$seed training failed, see $run.log" >> "$results/runs.txt"; continue
  fi
  end=$(date +%s)
  .venv/bin/agrnet evaluate --checkpoint $run/best.pt --split test --json "$results/${row}_s$seed.json" > $run.eval.log 2>&1
  echo "$row seed=$seed train_seconds=$((end-start)) $(grep -a -o 'val mean F1 [0-9.]*' $run.log | tail -1)" >> "$results/runs.txt"
done
