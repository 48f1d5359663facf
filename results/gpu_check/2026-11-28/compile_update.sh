#!/bin/bash
# device run 2 (2026-11-28): does the fused AdamW and torch.compile of the window path shorten the paper config's
# update on the GPU? RL³, paper random-MDP config, 2 timed iterations after a warm-up, same machine, one after another
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 MPLBACKEND=Agg
run() {  # $1 = seconds allowed, then overrides
  local limit=$1; shift
  echo "=== $* ($(( $(date +%s) - T0 )) s)"
  OMP_NUM_THREADS=2 timeout -s KILL $limit taskset -c 0,1 python3 benchmarks/train_throughput.py --configs paper_random_mdp \
    --algos rl3 --iterations 2 --device cuda -- "$@" 2>&1 | grep -v INFO | grep -iv "warn" | tail -6
}
run 60 ppo.fused_optimizer=false
run 60 ppo.fused_optimizer=true
run 150 ppo.fused_optimizer=true compile.enabled=true
run 150 ppo.fused_optimizer=true compile.enabled=true compile.mode=reduce-overhead
run 60 ppo.fused_optimizer=false
echo "all done at $(( $(date +%s) - T0 )) s"
