#!/usr/bin/env bash
# Baseline training on SLURM nodes: one `accelerate launch scripts/train_baseline.py` per node (slurm/_launch.sh).
# Submit from the repository root; flags after the script go to train_baseline.py:
#   sbatch --nodes 2 --gpus-per-node 8 slurm/train.sh --arch conv --run-dir runs/conv-2x8   # 16 GPU processes
#   sbatch --nodes 1 slurm/train.sh --arch conv --epochs 2                                   # CPU node: 2 processes
# GPUs per node: GPUS_PER_NODE (default: what SLURM allocated, else nvidia-smi's count); on CPU-only nodes
# CPU_PROCS_PER_NODE (default 2). SA_DIST_CACHE must be on a filesystem every node sees.
#SBATCH --job-name=sa-train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=2
#SBATCH --time=02:00:00
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
[ -f slurm/_launch.sh ] || { echo "submit from the repository root: sbatch slurm/train.sh ..." >&2; exit 2; }
exec bash slurm/_launch.sh scripts/train_baseline.py "$@"
