#!/bin/bash
# First probes on the 7×7 family (150 iterations, 0.48M frames each, the recipe's default optimisation settings):
# RL³ unscaled and with ppo.reward_scale=0.01, RL² and RL³-coarse unscaled.
# Usage (from the repository root): bash results/grids/diagnosis/run_7x7.sh OUT_DIR
set -euo pipefail
out=${1:?OUT_DIR}
base="env=gridworld_7x7 horizon=null num_envs=32 iterations=150 progress=false checkpoint.every=50 eval.every=30
      eval.num_tasks=64"
run() {
  name=$1; shift
  python recipes/ppo_rl3.py $base "$@" output_dir="$out/$name" > "$out/$name.log" 2>&1
  python results/grids/diagnosis/inspect_run.py "$out/$name" > "$out/$name.inspect.jsonl"
}
run rl3_scale1 algo=rl3
run rl3_scale001 algo=rl3 ppo.reward_scale=0.01
run rl3_coarse_scale1 algo=rl3_coarse
run rl2_scale1 algo=rl2
