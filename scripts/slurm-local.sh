#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, from Debian's slurm-wlm and munge, for trying
# `continual sweep --emit slurm` (docs/sweeps.md) and for its test. Needs root.
#
#   scripts/slurm-local.sh start    # writes slurm.conf for this host (its real name, CPUs and memory,
#                                   # as `slurmd -C` reports them), a munge key where there is none,
#                                   # starts munged, slurmctld and slurmd, waits for the node to be idle
#   scripts/slurm-local.sh stop     # stops the daemons this script started (by their pid files)
#   scripts/slurm-local.sh env      # prints `export SLURM_CONF=...` for sbatch, squeue and sacct
#
# Idempotent: `start` on a running cluster checks it and returns. Everything lives in one folder,
# $CONTINUAL_SLURM_DIR (default /var/tmp/continual-slurm); the system's /etc/slurm is not touched.
# Clients find the cluster with SLURM_CONF=$CONTINUAL_SLURM_DIR/slurm.conf.
# Exit codes: 0 done, 1 a daemon did not come up (its log is named), 3 Slurm or munge is not installed.
set -euo pipefail

dir=${CONTINUAL_SLURM_DIR:-/var/tmp/continual-slurm}
conf=$dir/slurm.conf

need() {
    for program in munged slurmctld slurmd sbatch sinfo scontrol; do
        if ! command -v "$program" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$program" ]; then
            echo "error: $program is not installed (apt-get install slurm-wlm munge; scripts/setup.sh does it)" >&2
            exit 3
        fi
    done
    if [ "$(id -u)" != 0 ]; then
        echo "error: starting Slurm daemons needs root" >&2
        exit 3
    fi
}

# True while the process in a pid file runs.
running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

write_conf() {
    local host node
    host=$(hostname -s)
    # This host as slurmd sees it: CPUs, sockets, cores, threads, memory.
    node=$(/usr/sbin/slurmd -C | head -n 1)
    mkdir -p "$dir/state" "$dir/spool" "$dir/log"
    cat >"$conf.tmp" <<EOF
# Written by scripts/slurm-local.sh for $host: one node, jobs share it by core.
ClusterName=continual
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldPort=${CONTINUAL_SLURMCTLD_PORT:-6817}
SlurmdPort=${CONTINUAL_SLURMD_PORT:-6818}
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
$node State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$conf.tmp" "$conf"
}

start_munge() {
    # A key where there is none (Debian's package makes one; a bare image may not have it).
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        if command -v mungekey >/dev/null 2>&1; then mungekey --create --keyfile=/etc/munge/munge.key >/dev/null
        else dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; fi
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged </dev/null >/dev/null 2>&1
    # The pid of the munged this script started, for `stop`.
    for _ in $(seq 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
    cp /run/munge/munged.pid "$dir/munged.pid" 2>/dev/null || true
    if ! munge -n | unmunge >/dev/null 2>&1; then
        echo "error: munged did not start (see /var/log/munge/munged.log)" >&2
        exit 1
    fi
}

start() {
    need
    mkdir -p "$dir"
    if running "$dir/slurmctld.pid" && running "$dir/slurmd.pid"; then
        echo "slurm is running ($conf)"
        return 0
    fi
    write_conf
    start_munge
    export SLURM_CONF=$conf
    # The daemons keep no descriptor of the caller's (a caller reading our output to its end would wait on them).
    running "$dir/slurmctld.pid" || /usr/sbin/slurmctld -f "$conf" </dev/null >/dev/null 2>&1
    running "$dir/slurmd.pid" || /usr/sbin/slurmd -f "$conf" </dev/null >/dev/null 2>&1
    local host state=""
    host=$(hostname -s)
    for _ in $(seq 150); do
        state=$(sinfo -h -n "$host" -o %T 2>/dev/null | head -n 1 || true)
        case "$state" in
            idle|mixed|allocated) echo "slurm is running: node $host $state ($conf)"; return 0 ;;
            down*|drain*) scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 0.2
    done
    echo "error: the node did not become idle (state '${state:-none}'); see $dir/log/slurmctld.log and $dir/log/slurmd.log" >&2
    exit 1
}

stop() {
    local pidfile
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munged.pid"; do
        if running "$pidfile"; then
            local pid
            pid=$(cat "$pidfile")
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
        rm -f "$pidfile"
    done
    echo "slurm stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    env) echo "export SLURM_CONF=$conf" ;;
    *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
