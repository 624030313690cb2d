#!/usr/bin/env bash
# Stop the cluster started by tests/slurm/start.sh STATE_DIR.
# Kills slurmd and slurmctld by their pid files (TERM, then KILL after 10 s),
# plus any slurmstepd left behind by slurmd. Safe to run twice.
set -uo pipefail

[[ $# -eq 1 ]] || { echo "usage: $0 STATE_DIR" >&2; exit 1; }
[[ -d $1 ]] || exit 0
STATE=$(cd "$1" && pwd -P)

# Cancel jobs first so no job steps outlive slurmd.
if [[ -f $STATE/slurm.conf ]] && [[ -s $STATE/slurmctld.pid ]] && kill -0 "$(cat "$STATE/slurmctld.pid")" 2>/dev/null; then
    SLURM_CONF=$STATE/slurm.conf timeout 10 scancel --full --quiet --user=root 2>/dev/null || true
    sleep 1
fi

# Step daemons are children of slurmd's process tree until they double-fork;
# find them by their spool dir in the command line is impossible, so use the
# pids recorded in slurmd's spool (one <node>_<job>.<step> socket per step)
# indirectly: any slurmstepd whose parent chain is gone is reparented to 1, so
# we collect slurmstepd pids whose environment SLURM_CONF points at us.
stepds() {
    local p
    for p in $(pgrep -x slurmstepd 2>/dev/null); do
        if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qxF "SLURM_CONF=$STATE/slurm.conf"; then
            echo "$p"
        fi
    done
}

stop_pidfile() {
    local f=$1 pid
    [[ -s $f ]] || return 0
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "stop.sh: pid $pid ($f) ignored TERM, sending KILL" >&2
            kill -KILL "$pid" 2>/dev/null
        fi
    fi
    rm -f "$f"
}

stop_pidfile "$STATE/slurmd.pid"
for p in $(stepds); do kill -KILL "$p" 2>/dev/null; done
stop_pidfile "$STATE/slurmctld.pid"

if [[ -L $STATE/spool.link ]]; then
    rm -rf "$(readlink "$STATE/spool.link")" "$STATE/spool.link"
fi
exit 0
