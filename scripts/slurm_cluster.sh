#!/usr/bin/env bash
# A single-node Slurm cluster in one folder: for the Slurm launcher's test, and for trying
# `make round LAUNCHER=slurm` on one machine. Needs root and Debian's slurm-wlm and munge.
#
#   scripts/slurm_cluster.sh start DIR [CPUS] [MEMORY_MIB]
#   export SLURM_CONF=DIR/slurm.conf      # then sbatch, squeue, make ... LAUNCHER=slurm
#   scripts/slurm_cluster.sh stop DIR     # stops the daemons it started, by PID; removes DIR
#
# Everything lives in DIR: munge's key and socket, the configuration, state, spool, logs and
# PID files; the ports are free ones picked at start. Nothing under /etc or /var is used.
set -euo pipefail

usage() { echo "usage: $0 start DIR [CPUS] [MEMORY_MIB] | stop DIR" >&2; exit 2; }
[ $# -ge 2 ] || usage
command=$1
dir=$2

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
    local cpus=${1:-$(nproc)}
    local memory=${2:-$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) * 3 / 4 ))}
    if [ "$(id -u)" != 0 ]; then
        echo "$0: starting munged, slurmctld and slurmd needs root" >&2
        exit 1
    fi
    for tool in munged slurmctld slurmd sbatch sinfo; do
        command -v "$tool" > /dev/null || {
            echo "$0: $tool not found: install Debian's slurm-wlm and munge (make test does)" >&2
            exit 1
        }
    done
    if [ -e "$dir/slurm.conf" ]; then
        echo "$0: $dir already holds a cluster; stop it first" >&2
        exit 1
    fi
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    chmod 700 "$dir"
    mkdir -p "$dir/munge" "$dir/state" "$dir/spool"
    chmod 700 "$dir/munge"
    head -c 1024 /dev/urandom > "$dir/munge/munge.key"
    chmod 400 "$dir/munge/munge.key"
    munged --force --socket="$dir/munge/munge.sock" --key-file="$dir/munge/munge.key" \
        --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" \
        --seed-file="$dir/munge/munged.seed"
    local host
    host=$(hostname)
    cat > "$dir/slurm.conf" <<CONF
ClusterName=raffm
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.sock
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
MinJobAge=3600
NodeName=$host CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
    slurmctld -f "$dir/slurm.conf"
    slurmd -f "$dir/slurm.conf"
    for _ in $(seq 1 100); do
        if [ "$(SLURM_CONF=$dir/slurm.conf sinfo -h -o %T 2> /dev/null)" = idle ]; then
            echo "Slurm cluster up: export SLURM_CONF=$dir/slurm.conf"
            return 0
        fi
        sleep 0.2
    done
    echo "$0: the node did not come up; see $dir/slurmctld.log and $dir/slurmd.log" >&2
    stop
    exit 1
}

stop() {
    # Jobs first, so that no step outlives the daemons.
    if [ -e "$dir/slurm.conf" ]; then
        SLURM_CONF=$dir/slurm.conf scancel --quiet --partition=main 2> /dev/null || true
        for _ in $(seq 1 50); do
            [ -z "$(SLURM_CONF=$dir/slurm.conf squeue -h 2> /dev/null)" ] && break
            sleep 0.1
        done
    fi
    local pids=()
    for file in slurmd.pid slurmctld.pid munge/munged.pid; do
        if [ -s "$dir/$file" ]; then
            local pid
            pid=$(cat "$dir/$file")
            kill "$pid" 2> /dev/null && pids+=("$pid")
        fi
    done
    for pid in "${pids[@]+"${pids[@]}"}"; do
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2> /dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2> /dev/null || true
    done
    # Steps of jobs that did not end run their scripts from the spool folder.
    pkill -9 -f "$dir/spool" 2> /dev/null || true
    rm -rf "$dir"
}

case $command in
    start) shift 2; start "$@" ;;
    stop) stop ;;
    *) usage ;;
esac
