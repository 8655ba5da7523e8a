#!/usr/bin/env bash
# Start one `accelerate launch SCRIPT ARGS...` per node of the current SLURM allocation (srun, one task per node);
# together they form one torch.distributed job of NODES x PROCS_PER_NODE processes. Used by slurm/train.sh and
# slurm/unlearn.sh; any other job script can call it the same way, from the repository root:
#   bash slurm/_launch.sh scripts/unlearn.py --forget 2
# Settings (environment variables):
#   GPUS_PER_NODE       processes per node on GPU nodes (default: the GPUs SLURM gave the job, $SLURM_GPUS_ON_NODE,
#                       else the count `nvidia-smi -L` reports, else 0 = a CPU-only node)
#   CPU_PROCS_PER_NODE  processes per node on a CPU-only node (default 2); the node's CPUs are shared out as threads
#   MAIN_PORT           rendezvous port on the first node (default 29500)
#   ACCELERATE_CONFIG   an accelerate config file to start from (e.g. accelerate_multi_gpu.yaml), optional
set -euo pipefail

if [ "${1:-}" != --on-node ]; then  # in the batch script: settle the layout once, then one launcher per node
  [ $# -ge 1 ] || { echo "usage: bash slurm/_launch.sh SCRIPT [ARGS...] (inside sbatch/salloc)" >&2; exit 2; }
  : "${SLURM_JOB_NODELIST:?run inside a SLURM allocation, e.g. sbatch slurm/train.sh}"
  export SA_NODES=${SLURM_NNODES:-1}
  export SA_MAIN_IP
  SA_MAIN_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | awk "NR == 1")  # awk reads all: no SIGPIPE
  gpus=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)}}
  export SA_PROCS_PER_NODE=$(( gpus > 0 ? gpus : ${CPU_PROCS_PER_NODE:-2} ))
  echo "sa_dist: $SA_NODES node(s) x $SA_PROCS_PER_NODE process(es) ($([ "$gpus" -gt 0 ] && echo GPU || echo CPU))," \
       "main $SA_MAIN_IP:${MAIN_PORT:-29500}: $*"
  exec srun --nodes="$SA_NODES" --ntasks="$SA_NODES" --ntasks-per-node=1 \
       --cpus-per-task="${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-1}}" --kill-on-bad-exit=1 \
       bash "${BASH_SOURCE[0]}" --on-node "$@"
fi
shift  # --on-node: one task per node; SLURM_NODEID is this node's rank
total=$(( SA_NODES * SA_PROCS_PER_NODE ))
threads=$(( ${SLURM_CPUS_ON_NODE:-1} / SA_PROCS_PER_NODE )); threads=$(( threads > 0 ? threads : 1 ))
args=(--num_machines "$SA_NODES" --machine_rank "$SLURM_NODEID" --main_process_ip "$SA_MAIN_IP"
      --main_process_port "${MAIN_PORT:-29500}" --num_processes "$total" --num_cpu_threads_per_process "$threads"
      --dynamo_backend no)
[ -n "${ACCELERATE_CONFIG:-}" ] && args=(--config_file "$ACCELERATE_CONFIG" "${args[@]}")
# --multi_gpu is Accelerate's torch.distributed launcher: NCCL on GPUs, gloo on CPU-only nodes (its --cpu flag
# would start one process per node); with one process in all it is left out (plain launch).
[ "$total" -gt 1 ] && args=(--multi_gpu --same_network "${args[@]}")
exec accelerate launch "${args[@]}" "$@"
