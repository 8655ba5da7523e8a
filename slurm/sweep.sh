#!/usr/bin/env bash
# A sweep of unlearning runs as a SLURM job array: one task per grid point, one shared baseline, one summary.
#
#   sbatch slurm/sweep.sh                                              # SA on each digit 0-9, conv, defaults
#   FORGET=2 METHODS="sa retrain naive no_ewc no_replay replay_only" sbatch slurm/sweep.sh
#   LAMS="0 0.1 1 10 100" UNLEARN_ARGS="--arch linear" sbatch slurm/sweep.sh
#   SEEDS="49 50 51" sbatch slurm/sweep.sh                            # every digit, 3 seeds: mean ± spread
#
# This job is small (1 CPU, seconds): it submits three jobs and exits. With SWEEP_WAIT=1 it stays (holding its CPU)
# until the last one ends, so `SWEEP_WAIT=1 sbatch --wait slurm/sweep.sh` returns when the summary is written,
# with the summary's exit status (the node needs a second CPU for the work meanwhile):
#   1. prepare   `scripts/sweep.py --prepare`: evaluator, baseline and Fisher (one per seed) into $SA_DIST_CACHE;
#   2. the array (after 1 succeeded): task I runs `accelerate launch scripts/unlearn.py <point I's flags>`,
#                the point chosen by $SLURM_ARRAY_TASK_ID (`scripts/sweep.py --task-args I`); every task reads
#                the baseline and Fisher from the shared cache;
#   3. aggregate (after 2 ended): `scripts/aggregate.py $OUT --out $OUT/summary` -> summary.md/.json/.png; it
#                fails if a point has no results.json.
# A point that finished before (its run directory holds results.json) is skipped, so resubmitting resumes.
#
# Settings: set any of these in the environment of `sbatch` (it exports the environment to the job).
#SBATCH --job-name=sa-sweep
#SBATCH --cpus-per-task=1
#SBATCH --time=2-00:00:00
set -euo pipefail

# --- where ---------------------------------------------------------------------------------------------------
: "${SA_DIST_DIR:=${SLURM_SUBMIT_DIR:-$PWD}}"  # the sa_dist clone whose scripts run (default: the submit dir)
: "${OUT:=$SA_DIST_DIR/runs/sweep-${SLURM_JOB_ID:-$(date +%Y%m%d-%H%M%S)}}"  # run directories + summary
: "${LOG_DIR:=$OUT/slurm-logs}"                # one log file per job / array task
: "${SA_DIST_CACHE:=$HOME/.cache/sa_dist}"     # baseline/Fisher/evaluator cache: must be storage all nodes see
# --- the grid (each a space-separated list) ------------------------------------------------------------------
: "${FORGET:=0 1 2 3 4 5 6 7 8 9}"            # classes, one point each; 2,7 = one point forgetting both
: "${METHODS:=sa}"                             # sa retrain naive no_ewc no_replay replay_only
: "${LAMS:=}"                                  # lambda values (empty: the default, 1)
: "${GAMMAS:=}"                                # gamma values (empty: the default, 1)
: "${SEEDS:=}"                                 # seeds, each a baseline's and its unlearning's (empty: the default)
: "${UNLEARN_ARGS:=}"                          # flags for every point, e.g. "--arch linear --sa_epochs 5"
# --- resources -----------------------------------------------------------------------------------------------
: "${PARTITION:=}"                             # empty: the cluster's default partition
: "${ACCOUNT:=}"                               # empty: your default account
: "${CPUS_PER_TASK:=4}"                        # CPUs per array task (and for the prepare job)
: "${GPUS_PER_TASK:=0}"                        # GPUs per task; >1 runs `accelerate launch --multi_gpu`
: "${MEM:=}"                                   # memory per job, e.g. 16G (empty: the cluster's default)
: "${TIME_PREPARE:=04:00:00}"                  # baseline training (conv, 50 epochs: ~8 min on 2 CPU cores)
: "${TIME_TASK:=01:00:00}"                     # one point (SA: ~1-2 min on 2 CPU cores; retrain: a baseline)
: "${MAX_PARALLEL:=}"                          # at most this many array tasks at once (empty: no limit)
# --- environment ---------------------------------------------------------------------------------------------
: "${SETUP:=}"                                 # run first in every job, e.g. "source ~/venvs/sa/bin/activate"
: "${PYTHON:=python}"
: "${SWEEP_WAIT:=0}"                           # 1: this job waits for the summary (holding 1 CPU); 0: exits
: "${SWEEP_STAGE:=submit}"                     # internal: submit | prepare | task | aggregate
export SA_DIST_DIR OUT LOG_DIR SA_DIST_CACHE FORGET METHODS LAMS GAMMAS SEEDS UNLEARN_ARGS PARTITION ACCOUNT \
  CPUS_PER_TASK GPUS_PER_TASK MEM TIME_PREPARE TIME_TASK MAX_PARALLEL SETUP PYTHON SWEEP_WAIT
export PYTHONPATH="$SA_DIST_DIR${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-$CPUS_PER_TASK}"

cd "$SA_DIST_DIR"
eval "$SETUP"
# shellcheck disable=SC2206  # the lists are meant to split into words
GRID=(--out-dir "$OUT" --forget $FORGET --method $METHODS ${LAMS:+--lam $LAMS} ${GAMMAS:+--gamma $GAMMAS}
      ${SEEDS:+--seeds $SEEDS} $UNLEARN_ARGS)
LAUNCH=(accelerate launch --num_machines 1 --num_processes "$(( GPUS_PER_TASK > 1 ? GPUS_PER_TASK : 1 ))"
        --mixed_precision no --dynamo_backend no)
if (( GPUS_PER_TASK > 1 )); then LAUNCH+=(--multi_gpu); fi

submit() {  # submit STAGE [sbatch options...]: this same script in another stage; prints the job id
  local stage=$1; shift
  local opts=(--parsable --export=ALL --kill-on-invalid-dep=yes ${PARTITION:+--partition="$PARTITION"}
              ${ACCOUNT:+--account="$ACCOUNT"} ${MEM:+--mem="$MEM"})
  SWEEP_STAGE=$stage sbatch "${opts[@]}" "$@" "$SA_DIST_DIR/slurm/sweep.sh"
}

case "$SWEEP_STAGE" in
submit)
  n=$("$PYTHON" scripts/sweep.py "${GRID[@]}" --count)  # also validates every point before anything runs
  mkdir -p "$LOG_DIR"
  gpus=(); if (( GPUS_PER_TASK > 0 )); then gpus=(--gres="gpu:$GPUS_PER_TASK"); fi
  prep=$(submit prepare --job-name=sa-sweep-prepare --cpus-per-task="$CPUS_PER_TASK" "${gpus[@]}" \
         --time="$TIME_PREPARE" --output="$LOG_DIR/prepare-%j.out")
  arr=$(submit task --job-name=sa-sweep-task --cpus-per-task="$CPUS_PER_TASK" "${gpus[@]}" --time="$TIME_TASK" \
        --array="0-$((n - 1))${MAX_PARALLEL:+%$MAX_PARALLEL}" --dependency="afterok:$prep" \
        --output="$LOG_DIR/task-%a.out")
  echo "sweep: $n points -> $OUT; jobs: prepare $prep, array $arr (logs in $LOG_DIR)"
  wait_flag=(); if [ "$SWEEP_WAIT" = 1 ]; then wait_flag=(--wait); fi
  rc=0
  agg=$(submit aggregate --job-name=sa-sweep-aggregate --cpus-per-task=1 --time=00:30:00 \
        --dependency="afterany:$arr" --output="$LOG_DIR/aggregate-%j.out" "${wait_flag[@]}") || rc=$?
  echo "aggregate: job $agg -> $OUT/summary.md"
  if [ "$SWEEP_WAIT" = 1 ]; then cat "$LOG_DIR/aggregate-$agg.out"; fi
  exit "$rc"
  ;;
prepare)
  "${LAUNCH[@]}" scripts/sweep.py "${GRID[@]}" --prepare
  ;;
task)
  args=$("$PYTHON" scripts/sweep.py "${GRID[@]}" --task-args "$SLURM_ARRAY_TASK_ID")
  if [ -z "$args" ]; then echo "point $SLURM_ARRAY_TASK_ID finished before; skipped"; exit 0; fi
  eval "set -- $args"  # shell-quoted by sweep.py
  echo "point $SLURM_ARRAY_TASK_ID on $(hostname): ${LAUNCH[*]} scripts/unlearn.py $*"
  "${LAUNCH[@]}" scripts/unlearn.py "$@"
  ;;
aggregate)
  missing=0
  while read -r i dir; do
    [ -f "$dir/results.json" ] || { echo "point $i has no results: $dir (see $LOG_DIR/task-$i.out)"; missing=1; }
  done < <("$PYTHON" scripts/sweep.py "${GRID[@]}" --list)
  "$PYTHON" scripts/aggregate.py "$OUT" --out "$OUT/summary" --title "sbatch slurm/sweep.sh: $OUT"
  exit "$missing"
  ;;
*)
  echo "SWEEP_STAGE must be submit, prepare, task or aggregate, got '$SWEEP_STAGE'" >&2; exit 2
  ;;
esac
