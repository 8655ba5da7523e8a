#!/usr/bin/env bash
# A real one-node SLURM for tests: munged + slurmctld + slurmd on this host, configured in a private directory.
#   bash tests/slurm/local_cluster.sh up DIR    # writes DIR/slurm.conf, starts the daemons, waits until the node is idle
#   bash tests/slurm/local_cluster.sh down DIR  # stops them
# Use it with `export SLURM_CONF=DIR/slurm.conf`. Needs root and Debian's slurm-wlm + munge (see .ci/run).
set -euo pipefail
cmd=${1:?up|down}; dir=$(realpath -m "${2:?state directory}")
host=$(hostname -s); cpus=$(getconf _NPROCESSORS_ONLN)  # not nproc, which obeys OMP_NUM_THREADS
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))

stop() {
  for d in slurmd slurmctld; do
    [ -f "$dir/$d.pid" ] && kill "$(cat "$dir/$d.pid")" 2>/dev/null || true
  done
  sleep 1
}

if [ "$cmd" = down ]; then stop; exit 0; fi
[ "$cmd" = up ] || { echo "usage: $0 up|down DIR" >&2; exit 2; }
mkdir -p "$dir/state" "$dir/spool"
# Ports of their own, so that several test sessions on one host (each with its own DIR) do not collide.
read -r ctld_port slurmd_port < <(python3 -c 'import socket
ss = [socket.socket() for _ in range(2)]
[s.bind(("", 0)) for s in ss]
print(*(s.getsockname()[1] for s in ss))')
cat > "$dir/slurm.conf" <<CONF
ClusterName=sa_dist_test
SlurmctldHost=$host
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# sbatch --wait polls a job every 2 s, 8 s, then 32 s while that is under MinJobAge / 2 (300 s by default): a job of
# 11 s is seen done after 42 s. Finished jobs kept 4 s (a purge thread runs far less often) keep the poll at 2 s.
MinJobAge=4
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmctldParameters=enable_configless
# One CPU more than the host has (SlurmdParameters=config_overrides): a job that only waits for others, as
# `SWEEP_WAIT=1 sbatch --wait slurm/sweep.sh` does, then does not keep a core from the work it waits for.
SlurmdParameters=config_overrides
NodeName=$host CPUs=$((cpus + 1)) RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
printf 'CgroupPlugin=autodetect\nIgnoreSystemd=yes\n' > "$dir/cgroup.conf"
export SLURM_CONF=$dir/slurm.conf
pgrep -x munged >/dev/null || { mkdir -p /run/munge && chown munge:munge /run/munge && su -s /bin/sh munge -c munged; }
stop
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 60); do
  state=$(sinfo -h -N -o %t 2>/dev/null | head -1 || true)
  [ "$state" = idle ] && { echo "slurm up: node $host ($cpus CPUs + 1), SLURM_CONF=$SLURM_CONF"; exit 0; }
  sleep 1
done
echo "slurm did not come up (node state '${state:-none}'); logs in $dir" >&2
exit 1
