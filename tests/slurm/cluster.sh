#!/usr/bin/env bash
# A SLURM cluster on this machine, from Debian's slurmctld, slurmd, slurm-client and munge (bash
# tests/system_packages.sh installs them), for tests/test_slurm.py (one node) and tests/test_slurm_nodes.py (two).
# As root:
#   bash tests/slurm/cluster.sh up DIR      write DIR/slurm.conf, start munged (if not running), slurmctld, slurmd
#   bash tests/slurm/cluster.sh down DIR    stop what `up` started; DIR keeps the daemons' logs
#   bash tests/slurm/cluster.sh lose DIR NODE   (two nodes or more) NODE's machine is gone: every process in its
#                                           namespace killed (its slurmd, its jobs' steps and what they started)
#                                           and the node set DOWN, as an administrator does for a dead node
#
# SLURM_TEST_NODES=2 (or more) gives each node a machine of its own as far as the network goes: nodes node1,
# node2, ..., each slurmd in a network namespace (mathsft-node1, ...) with its own address on a bridge
# (mathsftbr0, SLURM_TEST_SUBNET.1; node i at .1i; SLURM_TEST_SUBNET is 10.77.0), its own host name (a UTS
# namespace) and an /etc/hosts of its own (DIR/hosts, bind-mounted in a mount namespace) that names the nodes,
# so a job's processes see the host name of their node, and torchrun's rendezvous and gloo reach another node
# by its name. slurmctld stays in this namespace, reached at the bridge's address. Only the bridge's and the
# namespaces' addresses and loopback are used; `down` removes the namespaces and the bridge.
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
nodes=${SLURM_TEST_NODES:-1}
subnet=${SLURM_TEST_SUBNET:-10.77.0}
bridge=mathsftbr0
node_names=("$node")
if ((nodes > 1)); then
    node_names=()
    for ((i = 1; i <= nodes; i++)); do node_names+=("node$i"); done
fi

log() { echo "cluster: $*" >&2; }

fail() {  # a failed `up` stops what it had started
    log "$*"
    for file in "$state/slurmctld.log" "$state"/slurmd*.log; do
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

# Every node idle (or mixed).
nodes_idle() { [ "$(sinfo -h -N -o %t | grep -cx 'idle\|mix')" -eq "$nodes" ]; }

slurmd_name() { if ((nodes > 1)); then echo "slurmd-$1"; else echo slurmd; fi; }

network_up() {  # the bridge, and per node a namespace with a veth on it, its address and loopback
    touch "$state/created-network"
    if ip link show "$bridge" >/dev/null 2>&1; then  # a run killed before its `down`: these names are this script's
        log "removing the bridge $bridge and the namespaces a run left"
        network_down
        touch "$state/created-network"
    fi
    ip link add "$bridge" type bridge || fail "cannot make the bridge $bridge (ip link add ... type bridge)"
    ip link set "$bridge" up
    ip addr add "$subnet.1/24" dev "$bridge"
    printf '127.0.0.1 localhost\n%s.1 %s\n' "$subnet" "$node" >"$state/hosts"
    for ((i = 1; i <= nodes; i++)); do
        ip netns add "mathsft-node$i"
        ip link add "mathsftv$i" type veth peer name eth0 netns "mathsft-node$i"
        ip link set "mathsftv$i" master "$bridge" up
        ip -n "mathsft-node$i" addr add "$subnet.1$i/24" dev eth0
        ip -n "mathsft-node$i" link set eth0 up
        ip -n "mathsft-node$i" link set lo up
        echo "$subnet.1$i node$i" >>"$state/hosts"
    done
}

network_down() {
    if [ -s "$state/nodes" ]; then
        mapfile -t node_names <"$state/nodes"
        nodes=${#node_names[@]}
    fi
    [ -f "$state/created-network" ] || return 0
    for namespace in $(ip netns list | awk '/^mathsft-node[0-9]+/ {print $1}'); do
        ip netns delete "$namespace" || true
    done
    ip link delete "$bridge" 2>/dev/null || true
    rm -f "$state/created-network"
}

start_slurmd() {  # start_slurmd NAME INDEX: in one-node mode here; else in node INDEX's namespaces
    if ((nodes == 1)); then
        slurmd -f "$conf" -N "$1"
    else
        # nsenter, not `ip netns exec`, which mounts a sysfs of the namespace over /sys (slurmd wants the cgroups).
        nsenter --net="/run/netns/mathsft-node$2" unshare --uts --mount --propagation private \
            sh -c 'hostname "$1" && mount --bind "$2" /etc/hosts && exec slurmd -f "$3" -N "$1"' \
            sh "$1" "$state/hosts" "$conf"
    fi
}

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
    mkdir -p "$state/slurmctld"
    for name in "${node_names[@]}"; do mkdir -p "$state/$(slurmd_name "$name")"; done  # spool folders

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
    local node_list=$node ctld_host=$node node_addr=""
    if ((nodes > 1)); then
        network_up
        node_list="node[1-$nodes]" ctld_host="$node($subnet.1)" node_addr="NodeAddr=$subnet.[11-1$nodes] "
    fi
    printf '%s\n' "${node_names[@]}" >"$state/nodes"  # what `down` stops, whatever SLURM_TEST_NODES says then
    (IFS=,; echo "NodeName=$node_list Name=gpu File=${devices[*]}") >"$state/gres.conf"

    local port=${SLURM_TEST_PORT:-16817}
    sed -e "s|@NODES@|$node_list|g" -e "s|@CTLD_HOST@|$ctld_host|g" -e "s|@NODE_ADDR@|$node_addr|g" \
        -e "s|@SLURMD@|$(slurmd_name %n)|g" \
        -e "s|@STATE@|$state|g" -e "s|@CPUS@|$(nproc)|g" -e "s|@GPUS@|$gpus|g" \
        -e "s|@MEMORY_MB@|${SLURM_TEST_MEMORY_MB:-262144}|g" -e "s|@PARTITION@|${SLURM_TEST_PARTITION:-debug}|g" \
        -e "s|@CTLD_PORT@|$port|g" -e "s|@SLURMD_PORT@|$((port + 1))|g" \
        "$here/slurm.conf.in" >"$conf"

    mkdir -p "$(dirname "$system_conf")"
    ln -sfn "$conf" "$system_conf"

    # -c: a fresh controller state (no jobs from an earlier run); -i: ignore unreadable old state.
    slurmctld -c -i -f "$conf" || fail "slurmctld did not start"
    wait_for 20 slurmctld scontrol ping || fail "slurmctld does not answer"
    for ((i = 0; i < ${#node_names[@]}; i++)); do
        start_slurmd "${node_names[i]}" $((i + 1)) || fail "slurmd of ${node_names[i]} did not start"
    done
    if ! wait_for 30 "nodes idle" nodes_idle; then
        scontrol update nodename="$node_list" state=resume >/dev/null 2>&1 || true
        wait_for 10 "nodes idle" nodes_idle || fail "nodes are not idle: $(sinfo -h -N -o '%N %t %E')"
    fi
    log "up: ${node_names[*]}, $(nproc) CPUs and $gpus fake GPUs each, partition ${SLURM_TEST_PARTITION:-debug};" \
        "$system_conf -> $conf"
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
    if [ -s "$state/nodes" ]; then
        mapfile -t node_names <"$state/nodes"
        nodes=${#node_names[@]}
    fi
    # Jobs first (their steps end with them), then the daemons this script started, by their pid files.
    if [ -f "$state/slurmctld.pid" ]; then
        scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
    fi
    for name in "${node_names[@]}"; do
        stop_daemon slurmd "$state/$(slurmd_name "$name").pid"
    done
    stop_daemon slurmctld "$state/slurmctld.pid"
    if [ -L "$system_conf" ] && [ "$(readlink "$system_conf")" = "$conf" ]; then
        rm -f "$system_conf"
    fi
    if [ -f "$state/started-munged" ]; then
        stop_daemon munged /run/munge/munged.pid
        rm -f "$state/started-munged"
    fi
    network_down
    if [ -f "$state/created-devices" ]; then
        xargs rm -f <"$state/created-devices"
        rm -f "$state/created-devices"
    fi
    log "down ($state keeps the logs)"
}

lose() {
    local name=${1:-} namespace
    namespace="mathsft-${name}"
    [[ "$name" =~ ^node[0-9]+$ ]] && ip netns list | grep -q "^$namespace\b" || { log "no node ${name:-(none given)} to lose"; exit 2; }
    local pids
    pids=$(ip netns pids "$namespace")
    [ -z "$pids" ] || kill -9 $pids
    scontrol update nodename="$name" state=down reason="lost: cluster.sh lose"
    log "lost $name: $(echo $pids | wc -w) processes killed, node DOWN"
}

case "$command" in
up) up ;;
down) down ;;
lose) lose "${3:-}" ;;
*)
    echo "usage: $0 up|down DIR | lose DIR NODE" >&2
    exit 2
    ;;
esac
