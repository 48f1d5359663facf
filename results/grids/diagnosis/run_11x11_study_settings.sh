#!/bin/bash
# 11×11 grids with the grids study's settings instead of the documented command's: lr 3e-4, entropy bonus 0.1
# decayed linearly to 0, ppo.reward_scale=0.01, 300 iterations of 32 meta-episodes (2.4M frames); RL³ then RL²,
# one seed each, then inspect_run.py on every kept checkpoint.
# Usage (from the repository root): bash results/grids/diagnosis/run_11x11_study_settings.sh OUT_DIR [ALGO ...]
set -euo pipefail
out=${1:?OUT_DIR}; shift
for algo in ${*:-rl3 rl2}; do
  start=$(date +%s)
  python recipes/ppo_rl3.py env=gridworld_11x11 horizon=null algo=$algo num_envs=32 iterations=300 \
      ppo.reward_scale=0.01 eval.every=50 eval.num_tasks=64 progress=false checkpoint.every=50 \
      checkpoint.keep_last=6 output_dir="$out/study_settings_$algo" > "$out/study_settings_$algo.log" 2>&1
  echo "$algo: $(( $(date +%s) - start )) s"
  python results/grids/diagnosis/inspect_run.py $(ls -v "$out/study_settings_$algo"/checkpoints/iteration_*.pt) \
      > "$out/study_settings_$algo.inspect.jsonl"
done
