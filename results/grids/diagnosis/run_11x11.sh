#!/bin/bash
# The 11×11 collapse, diagnosed: the documented RL² command (docs/reproducing.rst, tests/test_training.py's slow
# test) at ppo.reward_scale 1 and 0.01, then one change of the scale-0.01 run at a time: a larger constant entropy
# bonus (0.1), no advantage normalisation, the discount γ (0.95 and 0.999 instead of 0.99). The default NAMEs are
# the first three; pass the others by name.
# Every run keeps a checkpoint every 25 iterations; inspect_run.py reads each of them.
# Usage (from the repository root): bash results/grids/diagnosis/run_11x11.sh OUT_DIR [NAME ...]
set -euo pipefail
out=${1:?OUT_DIR}; shift
names=${*:-scale1 scale001 scale001_entropy01}
base="env=gridworld_11x11 horizon=null algo=rl2 iterations=150 ppo.lr=0.0005 ppo.entropy_coeff=0.04
      ppo.entropy_schedule=constant eval.every=25 progress=false checkpoint.every=25 checkpoint.keep_last=6"
declare -A extra=(
  [scale1]="ppo.reward_scale=1.0"
  [scale001]="ppo.reward_scale=0.01"
  [scale001_entropy01]="ppo.reward_scale=0.01 ppo.entropy_coeff=0.1"
  [scale001_raw_advantages]="ppo.reward_scale=0.01 ppo.normalize_advantage=false"
  [scale001_gamma095]="ppo.reward_scale=0.01 ppo.gamma=0.95"
  [scale001_gamma0999]="ppo.reward_scale=0.01 ppo.gamma=0.999"
)
for name in $names; do
  start=$(date +%s)
  python recipes/ppo_rl3.py $base ${extra[$name]} output_dir="$out/$name" > "$out/$name.log" 2>&1
  echo "$name: $(( $(date +%s) - start )) s"
  python results/grids/diagnosis/inspect_run.py $(ls -v "$out/$name"/checkpoints/iteration_*.pt) > "$out/$name.inspect.jsonl"
done
