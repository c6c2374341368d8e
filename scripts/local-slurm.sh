#!/usr/bin/env bash
# A real single-node Slurm cluster on localhost, kept entirely inside one directory, for tests and developers.
#
#   scripts/local-slurm.sh start  [DIR]   start munged, slurmctld and slurmd; check that jobs run
#   scripts/local-slurm.sh stop   [DIR]   cancel the jobs, then stop the three daemons
#   scripts/local-slurm.sh status [DIR]   say what runs (exit 0 when all three do, 3 otherwise)
#
# DIR defaults to ${NNUNET_PRUNE_SLURM_DIR:-/tmp/nnunet-prune-slurm}; keep it short, a UNIX socket path
# (DIR/munge/munge.socket.2) must stay under 100 bytes. Everything lives in DIR: the MUNGE key, socket, pid, log
# and seed files, slurm.conf, Slurm's state, spool, pid and log files. Nothing under /etc, /run or /var is touched
# and nothing is exported: `start` prints `export SLURM_CONF=DIR/slurm.conf` as its only line on stdout, so
#
#   eval "$(scripts/local-slurm.sh start)"
#
# points this shell's sbatch/squeue/srun/scancel at the cluster. Everything else goes to stderr. `start` on a
# running cluster prints the export line only. Needs root (slurmd starts jobs as their user) and Debian's
# packages: apt-get install slurm-wlm munge.
#
# The cluster: one node named after `hostname -s` (address 127.0.0.1) with CPUs=$(nproc) and most of
# /proc/meminfo's memory; partitions `debug` (default, no time limit) and `short` (MaxTime=00:05:00);
# proctrack/linuxproc, task/none, select/cons_tres with CR_CPU_Memory (DefMemPerCPU = memory / CPUs, so jobs that
# don't ask for memory can share the node), no accounting (sacct doesn't work), JobRequeue=1, MinJobAge=300, and
# AuthInfo cred_expire=10 and sched_interval=2: a requeued job runs again about 12 s after `scontrol requeue`
# (Slurm's defaults, 120 s and 60 s, would make tests of requeueing slow).
set -euo pipefail

readonly INSTALL_HINT="apt-get install slurm-wlm munge (Debian/Ubuntu)"
readonly DAEMONS=(slurmd slurmctld munged) # the order `stop` stops them in

log() { printf 'local-slurm: %s\n' "$*" >&2; }
die() {
    log "$*"
    exit 1
}
usage() {
    echo "usage: $0 start|stop|status [DIR]" >&2
    exit 2
}

# The path of a program: PATH first, then the sbin directories a non-root PATH often lacks.
find_bin() {
    local name=$1 d
    if command -v "$name" 2>/dev/null; then
        return 0
    fi
    for d in /usr/sbin /sbin /usr/local/sbin; do
        if [ -x "$d/$name" ]; then
            echo "$d/$name"
            return 0
        fi
    done
    return 1
}

# Exit 2 with one line when a program `start` needs is missing.
require_programs() {
    local missing=() name
    for name in munged slurmctld slurmd sbatch srun sinfo squeue scancel; do
        find_bin "$name" >/dev/null || missing+=("$name")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        log "missing ${missing[*]}: install Slurm and MUNGE with: $INSTALL_HINT"
        exit 2
    fi
}

pid_file() { echo "$dir/run/$1.pid"; }

# The daemon's pid when its pid file names a live process that was started for this DIR, else nothing.
running_pid() {
    local file pid
    file=$(pid_file "$1")
    [ -r "$file" ] || return 1
    pid=$(tr -dc '0-9' <"$file")
    [ -n "$pid" ] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # A recycled pid would not carry DIR on its command line.
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$dir/" || return 1
    echo "$pid"
}

all_running() {
    local name
    for name in "${DAEMONS[@]}"; do
        running_pid "$name" >/dev/null || return 1
    done
}

# Slurm client commands against this cluster only.
slurm_client() { SLURM_CONF="$dir/slurm.conf" "$@"; }

export_line() { printf 'export SLURM_CONF=%q\n' "$dir/slurm.conf"; }

# The TCP ports something listens on (IPv4 and IPv6), one a line, in decimal.
listening_ports() {
    local f
    for f in /proc/net/tcp /proc/net/tcp6; do
        [ -r "$f" ] || continue
        awk 'NR > 1 && $4 == "0A" { split($2, a, ":"); print a[2] }' "$f"
    done | while read -r hex; do echo $((16#$hex)); done
}

# The first port from $1 on that nothing listens on and that is not in the list $2.
free_port() {
    local port=$1 taken=" $2 " busy
    busy=" $(listening_ports | tr '\n' ' ') "
    while [ "$port" -lt $(($1 + 200)) ]; do
        if [[ $busy != *" $port "* && $taken != *" $port "* ]]; then
            echo "$port"
            return 0
        fi
        port=$((port + 1))
    done
    die "no free TCP port in $1..$(($1 + 199))"
}

# Wait up to $2 seconds for the command "${@:3}" to succeed; $1 names what is awaited.
wait_for() {
    local what=$1 seconds=$2 i
    shift 2
    for ((i = 0; i < seconds * 2; i++)); do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.5
    done
    log "timed out after ${seconds}s waiting for $what"
    return 1
}

job_state() { slurm_client scontrol show job -o "$1" | grep -o 'JobState=[A-Z_]*' | cut -d= -f2; }

# Whether job $1 has ended (in state $2 when given).
job_ended() {
    local state
    state=$(job_state "$1")
    case $state in
    PENDING | RUNNING | CONFIGURING | COMPLETING | SUSPENDED | REQUEUED | RESIZING | "") return 1 ;;
    *) [ -z "${2:-}" ] || [ "$state" = "$2" ] ;;
    esac
}

node_idle() { slurm_client sinfo -h -N -n "$node" -o %T | grep -qx idle; }

show_logs() {
    local f
    for f in "$dir"/log/*.log; do
        [ -r "$f" ] || continue
        log "--- last lines of $f"
        tail -n 15 "$f" >&2
    done
}

fail_start() {
    log "$*"
    show_logs
    stop_daemons
    exit 1
}

write_slurm_conf() {
    local cpus mem_mib real_mem def_mem ctld_port slurmd_port
    cpus=$(nproc)
    mem_mib=$(($(awk '/^MemTotal:/ { print $2 }' /proc/meminfo) / 1024))
    # slurmd drains a node that has less memory than configured: leave 5% (at least 256 MiB) to spare.
    real_mem=$((mem_mib - (mem_mib / 20 > 256 ? mem_mib / 20 : 256)))
    def_mem=$((real_mem / cpus))
    ctld_port=$(free_port 16817 "")
    slurmd_port=$(free_port 16818 "$ctld_port")
    cat >"$dir/slurm.conf" <<EOF
# Written by scripts/local-slurm.sh: a single-node cluster on localhost, everything under $dir.
ClusterName=localslurm
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
CredType=cred/munge
# socket= is read by both auth/munge and cred/munge, in the daemons and in the client commands.
AuthInfo=socket=$dir/munge/munge.socket.2,cred_expire=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$dir/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$def_mem
SchedulerType=sched/backfill
# The main scheduler every 2 s (default 60 s): nothing else starts a requeued job once its BeginTime has passed.
SchedulerParameters=sched_interval=2
ReturnToService=2
JobRequeue=1
MinJobAge=300
# No GresTypes: no generic resources.
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=short Nodes=ALL Default=NO MaxTime=00:05:00 State=UP
EOF
    # An empty SPANK stack: keeps the system's /etc/slurm/plugstack.conf (and its plugins) out.
    : >"$dir/plugstack.conf"
}

start_munged() {
    local munged mungekey_bin key=$dir/munge/munge.key
    munged=$(find_bin munged)
    if [ ! -s "$key" ]; then
        rm -f "$key"
        if mungekey_bin=$(find_bin mungekey); then
            "$mungekey_bin" --create --keyfile="$key" >&2
        else
            dd if=/dev/urandom of="$key" bs=1 count=1024 status=none
        fi
    fi
    chmod 0400 "$key"
    # --force: run as root and accept DIR's permissions; it also replaces a stale socket.
    "$munged" --force \
        --socket="$dir/munge/munge.socket.2" \
        --key-file="$key" \
        --pid-file="$(pid_file munged)" \
        --log-file="$dir/log/munged.log" \
        --seed-file="$dir/munge/munged.seed" >&2 ||
        fail_start "munged did not start"
    wait_for "munged's socket" 10 test -S "$dir/munge/munge.socket.2" || fail_start "munged did not start"
}

start_cluster() {
    require_programs
    local socket_path=$dir/munge/munge.socket.2
    if [ "${#socket_path}" -ge 100 ]; then
        die "DIR is too long for a UNIX socket path ($socket_path): use a shorter one"
    fi
    if all_running; then
        export_line
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        die "must run as root (slurmd starts jobs as their user)"
    fi
    stop_daemons # whatever part of an earlier cluster still runs
    mkdir -p "$dir"/{munge,state,spool,log,run}
    chmod 0755 "$dir/munge" # munged refuses clients that cannot traverse the socket's directory
    write_slurm_conf
    start_munged
    "$(find_bin slurmctld)" -f "$dir/slurm.conf" -c >&2 || fail_start "slurmctld did not start"
    "$(find_bin slurmd)" -f "$dir/slurm.conf" -N "$node" >&2 || fail_start "slurmd did not start"
    wait_for "node $node to be idle" 30 node_idle || fail_start "the node did not become idle"
    log "checking that jobs run: srun, sbatch"
    (cd "$dir" && slurm_client timeout 60 srun -N1 -n1 true) >&2 || fail_start "srun -N1 -n1 true failed"
    # What `sbatch --wait` checks, polled faster: its own polls (after 2 s, then 8 s more) make it take 10 s.
    local job
    job=$(cd "$dir" && slurm_client sbatch --parsable -o /dev/null --wrap true) ||
        fail_start "sbatch --wrap true failed"
    wait_for "batch job $job to complete" 60 job_ended "$job" || fail_start "batch job $job did not end"
    job_ended "$job" COMPLETED || fail_start "batch job $job (--wrap true) did not complete: $(job_state "$job")"
    log "running: slurmctld on port $(awk -F= '/^SlurmctldPort=/ { print $2 }' "$dir/slurm.conf"), node $node idle"
    export_line
}

# TERM, up to 10 s, then KILL; for each daemon whose pid file names a live process of this DIR.
stop_daemons() {
    local name pid i
    for name in "${DAEMONS[@]}"; do
        pid=$(running_pid "$name") || {
            rm -f "$(pid_file "$name")"
            continue
        }
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 20; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name (pid $pid) ignored SIGTERM: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$(pid_file "$name")"
        log "stopped $name (pid $pid)"
    done
}

# Jobs would outlive slurmd (their slurmstepd processes are not its children): cancel them first.
cancel_jobs() {
    if ! running_pid slurmctld >/dev/null || ! running_pid munged >/dev/null; then
        return 0
    fi
    local jobs
    jobs=$(slurm_client squeue -h -o %i 2>/dev/null | tr '\n' ' ') || return 0
    [ -n "${jobs// /}" ] || return 0
    log "cancelling jobs: $jobs"
    # shellcheck disable=SC2086 # one argument per job id
    slurm_client scancel $jobs >&2 || true
    wait_for "the jobs to end" 15 queue_empty || true
}

queue_empty() { [ -z "$(slurm_client squeue -h -o %i)" ]; }

stop_cluster() {
    cancel_jobs
    stop_daemons
}

status_cluster() {
    local name pid rc=0
    for name in munged slurmctld slurmd; do
        if pid=$(running_pid "$name"); then
            echo "$name: running (pid $pid)"
        else
            echo "$name: not running"
            rc=3
        fi
    done
    if [ "$rc" -eq 0 ]; then
        slurm_client sinfo || rc=3
        export_line
    fi
    return "$rc"
}

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    usage
fi
# Absolute, symbolic links resolved: daemons are recognised by this path on their command lines.
dir=$(realpath -m -- "${2:-${NNUNET_PRUNE_SLURM_DIR:-/tmp/nnunet-prune-slurm}}")
node=$(hostname -s)
case $1 in
start) start_cluster ;;
stop) stop_cluster ;;
status) status_cluster ;;
*) usage ;;
esac
