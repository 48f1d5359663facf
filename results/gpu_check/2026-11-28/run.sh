#!/bin/bash
# device run (2026-11-28): gpu_check (CUDA tests, syncs, frames/s) pinned to 2 cores as on 2026-11-27; the coarse
# abstraction's step-by-step check over 12 action seeds on CUDA; where a paper-config collection step goes on CUDA
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 MPLBACKEND=Agg
python3 -c "import torch, torchrl, tensordict, rl3_torchrl; print(torch.__version__, torchrl.__version__, tensordict.__version__, torch.cuda.get_device_name())" || exit 4
nproc; lscpu | grep 'Model name'; git log --oneline -1 2>/dev/null
OMP_NUM_THREADS=2 timeout -s KILL 300 taskset -c 0,1 python3 benchmarks/gpu_check.py --out $OUT 2>&1 | grep -v INFO | tee $OUT/gpu_check.log
echo "gpu_check done at $(( $(date +%s) - T0 )) s"
OMP_NUM_THREADS=2 timeout -s KILL 120 taskset -c 0,1 python3 .device/seedscan.py cuda 12 2>&1 | grep -v INFO | tee $OUT/seedscan.log
echo "seedscan done at $(( $(date +%s) - T0 )) s"
for algo in rl3 rl2; do
  OMP_NUM_THREADS=2 timeout -s KILL 100 taskset -c 0,1 python3 benchmarks/collection_step.py --config paper_random_mdp --device cuda --repeats 2 --algo $algo 2>&1 | grep -v INFO | tee -a $OUT/collection_step.log
done
echo "all done at $(( $(date +%s) - T0 )) s"
