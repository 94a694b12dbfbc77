#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, from Debian's slurmctld, slurmd, slurm-client and munge
# (bash tests/system_packages.sh installs them), for tests/test_slurm.py. As root:
#   bash tests/slurm/cluster.sh up DIR      write DIR/slurm.conf, start munged (if not running), slurmctld, slurmd
#   bash tests/slurm/cluster.sh down DIR    stop what `up` started; DIR keeps the daemons' logs
# While it is up, /etc/slurm/slurm.conf is a link to DIR/slurm.conf, so sbatch, squeue and the job steps
# find it (the SLURM executor drops SLURM_* variables, SLURM_CONF too, before its srun); `down` removes the
# link, and `up` refuses to replace a slurm.conf that is not such a link. Without a slurm.conf, the SLURM
# executor plugin's `scontrol show config` at import fails at once; with one and no controller answering it
# waits 10 s: tear the cluster down when done.
#
# The node declares fake GPUs as gres (character devices cloned from /dev/null: slurmd drops a GPU gres
# with no File=) so GPU requests are scheduled; the jobs themselves see no CUDA and run on the CPU.
# Settings: SLURM_TEST_GPUS (2), SLURM_TEST_MEMORY_MB (262144: declared, not enforced, so a profile's
# requests for real GPU nodes fit), SLURM_TEST_PARTITION (debug), SLURM_TEST_PORT (16817; slurmd uses +1).
set -euo pipefail

command=${1:-}
state=${2:-}
if [[ -z "$command" || -z "$state" ]]; then
    echo "usage: $0 up|down DIR" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$state"
state=$(cd "$state" && pwd)
conf="$state/slurm.conf"
system_conf=/etc/slurm/slurm.conf
export SLURM_CONF="$conf"
node=$(hostname -s)
gpus=${SLURM_TEST_GPUS:-2}

log() { echo "cluster: $*" >&2; }

fail() {  # a failed `up` stops what it had started
    log "$*"
    for file in "$state/slurmctld.log" "$state/slurmd.log"; do
        [ -f "$file" ] && { echo "== $file (last lines)" >&2; tail -n 20 "$file" >&2; }
    done
    [ "$command" = up ] && down
    exit 1
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.2 s until it succeeds
    local seconds=$1 description=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

node_idle() { sinfo -h -n "$node" -o %t | grep -qx 'idle\|mix'; }

gone() { ! kill -0 "$1" 2>/dev/null || grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

up() {
    [ "$(id -u)" -eq 0 ] || fail "run as root (slurmd starts jobs as their user)"
    for program in munged slurmctld slurmd sbatch scontrol; do
        command -v "$program" >/dev/null || fail "$program not found: as root, bash tests/system_packages.sh"
    done
    if [ -f "$state/slurmctld.pid" ] && scontrol ping >/dev/null 2>&1; then
        log "already up ($conf)"
        return
    fi
    if [ -e "$system_conf" ] && [ ! -L "$system_conf" ]; then
        log "$system_conf exists and is not a test cluster's link: this machine has SLURM set up; not touching it"
        exit 1
    fi
    # A cluster an interrupted test run left up (its link is still there): stop it first, it holds the ports.
    local previous
    previous=$(dirname "$(readlink "$system_conf" 2>/dev/null || echo "$conf")")
    if [ "$previous" != "$state" ] && [ -d "$previous" ]; then
        log "stopping the test cluster left up in $previous"
        bash "$0" down "$previous"
    fi
    mkdir -p "$state/slurmctld" "$state/slurmd"

    # munge: reuse a running daemon, else start one and remember to stop it.
    if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        [ -s /etc/munge/munge.key ] || mungekey --create --keyfile /etc/munge/munge.key
        install -d -o munge -g munge -m 0755 /run/munge
        install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
        chown munge:munge /etc/munge/munge.key
        runuser -u munge -- /usr/sbin/munged
        wait_for 10 munged sh -c 'munge -n </dev/null | unmunge' || fail "munged did not start"
        touch "$state/started-munged"
    fi

    # Fake GPUs: one character device per GPU, cloned from /dev/null (major 1, minor 3).
    local devices=()
    for ((i = 0; i < gpus; i++)); do
        local device="/dev/fakegpu$i"
        if [ ! -e "$device" ]; then
            mknod "$device" c 1 3
            echo "$device" >>"$state/created-devices"
        fi
        devices+=("$device")
    done
    (IFS=,; echo "NodeName=$node Name=gpu File=${devices[*]}") >"$state/gres.conf"

    local port=${SLURM_TEST_PORT:-16817}
    sed -e "s|@NODE@|$node|g" -e "s|@STATE@|$state|g" -e "s|@CPUS@|$(nproc)|g" -e "s|@GPUS@|$gpus|g" \
        -e "s|@MEMORY_MB@|${SLURM_TEST_MEMORY_MB:-262144}|g" -e "s|@PARTITION@|${SLURM_TEST_PARTITION:-debug}|g" \
        -e "s|@CTLD_PORT@|$port|g" -e "s|@SLURMD_PORT@|$((port + 1))|g" \
        "$here/slurm.conf.in" >"$conf"

    mkdir -p "$(dirname "$system_conf")"
    ln -sfn "$conf" "$system_conf"

    # -c: a fresh controller state (no jobs from an earlier run); -i: ignore unreadable old state.
    slurmctld -c -i -f "$conf" || fail "slurmctld did not start"
    wait_for 20 slurmctld scontrol ping || fail "slurmctld does not answer"
    slurmd -f "$conf" -N "$node" || fail "slurmd did not start"
    if ! wait_for 30 "node $node idle" node_idle; then
        scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
        wait_for 10 "node $node idle" node_idle || fail "node $node is not idle: $(sinfo -h -N -o '%N %t %E')"
    fi
    log "up: $node, $(nproc) CPUs, $gpus fake GPUs, partition ${SLURM_TEST_PARTITION:-debug}; $system_conf -> $conf"
}

stop_daemon() {  # stop_daemon NAME PIDFILE
    local name=$1 pidfile=$2 pid
    [ -s "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
        kill "$pid" 2>/dev/null || true
        wait_for 15 "$name to exit" gone "$pid" || { kill -9 "$pid" 2>/dev/null || true; }
    fi
    rm -f "$pidfile"
}

down() {
    # Jobs first (their steps end with them), then the daemons this script started, by their pid files.
    if [ -f "$state/slurmctld.pid" ]; then
        scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
    fi
    stop_daemon slurmd "$state/slurmd.pid"
    stop_daemon slurmctld "$state/slurmctld.pid"
    if [ -L "$system_conf" ] && [ "$(readlink "$system_conf")" = "$conf" ]; then
        rm -f "$system_conf"
    fi
    if [ -f "$state/started-munged" ]; then
        stop_daemon munged /run/munge/munged.pid
        rm -f "$state/started-munged"
    fi
    if [ -f "$state/created-devices" ]; then
        xargs rm -f <"$state/created-devices"
        rm -f "$state/created-devices"
    fi
    log "down ($state keeps the logs)"
}

case "$command" in
up) up ;;
down) down ;;
*)
    echo "usage: $0 up|down DIR" >&2
    exit 2
    ;;
esac
