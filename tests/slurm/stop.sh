#!/usr/bin/env bash
# Stop the cluster started by tests/slurm/start.sh STATE_DIR and leave nothing
# of it running:
#   1. scancel every job and wait (<= 15 s) for them to leave the queue;
#   2. TERM slurmd and slurmctld via their pid files (KILL after 10 s);
#   3. KILL leftovers: slurmstepd processes of this cluster and their
#      descendants, and any process whose environment has this SLURM_CONF
#      together with SLURM_JOB_ID (job processes that escaped their step).
# Only processes tied to this STATE_DIR are touched. Safe to run twice.
set -uo pipefail

[[ $# -eq 1 ]] || { echo "usage: $0 STATE_DIR" >&2; exit 1; }
[[ -d $1 ]] || exit 0
STATE=$(cd "$1" && pwd -P)
CONF=$STATE/slurm.conf

# Running and not a zombie (an exited daemon can linger as <defunct> here).
running() { local st; st=$(ps -o stat= -p "$1" 2>/dev/null); [[ -n $st && $st != Z* ]]; }
alive() { [[ -s $1 ]] && running "$(cat "$1")"; }

if [[ -f $CONF ]] && alive "$STATE/slurmctld.pid"; then
    export SLURM_CONF=$CONF
    timeout 10 scancel --quiet --user=root 2>/dev/null
    for _ in $(seq 30); do
        [[ -z $(timeout 5 squeue -h -o %i 2>/dev/null) ]] && break
        sleep 0.5
    done
fi

stop_pidfile() {
    local f=$1 pid
    [[ -s $f ]] || return 0
    pid=$(cat "$f")
    if running "$pid"; then
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 100); do
            running "$pid" || break
            sleep 0.1
        done
        if running "$pid"; then
            echo "stop.sh: pid $pid ($f) ignored TERM, sending KILL" >&2
            kill -KILL "$pid" 2>/dev/null
        fi
    fi
    rm -f "$f"
}
stop_pidfile "$STATE/slurmd.pid"
stop_pidfile "$STATE/slurmctld.pid"

# Leftover sweep.
environ() { tr '\0' '\n' 2>/dev/null <"/proc/$1/environ"; }
env_has() { environ "$1" | grep -qxF "$2"; }
descendants() {
    local c
    for c in $(pgrep -P "$1" 2>/dev/null); do echo "$c"; descendants "$c"; done
}
victims=()
for p in $(pgrep -x slurmstepd 2>/dev/null); do
    env_has "$p" "SLURM_CONF=$CONF" && victims+=("$p" $(descendants "$p"))
done
for d in /proc/[0-9]*; do
    p=${d#/proc/}
    [[ $p == "$$" ]] && continue
    if env_has "$p" "SLURM_CONF=$CONF" && environ "$p" | grep -q '^SLURM_JOB_ID='; then
        victims+=("$p")
    fi
done
if ((${#victims[@]})); then
    echo "stop.sh: killing leftover job processes: ${victims[*]}" >&2
    kill -KILL "${victims[@]}" 2>/dev/null
fi

if [[ -L $STATE/spool.link ]]; then
    rm -rf "$(readlink "$STATE/spool.link")" "$STATE/spool.link"
fi
exit 0
