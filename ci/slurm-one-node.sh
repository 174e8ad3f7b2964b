#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (Debian 12, root, with or without systemd),
# so that tests can submit real jobs through profiles/slurm (tests/test_slurm.py).
#
#   ci/slurm-one-node.sh start    install Debian's slurm-wlm + munge if missing, write the
#                                 config, start the daemons, wait until the node is idle
#   ci/slurm-one-node.sh stop     stop the daemons THIS script started (pids in $STATE_DIR)
#   ci/slurm-one-node.sh status   the recorded daemons and sinfo
#
# The node declares fake GPUs as GRES (character devices with no driver behind them):
# jobs that ask --gpus=1 are scheduled and get CUDA_VISIBLE_DEVICES, but torch finds no
# driver, which is what mmbalance.devices.training_device handles.
#
# Settings (environment):
#   MMB_SLURM_ACCOUNTING=none|slurmdbd  none (default): no accounting database; sacct
#                         then fails and the workflow must poll with squeue (the profile
#                         does). slurmdbd: MariaDB + slurmdbd, so that sacct works too
#                         (about 25 s more to install, 120 MB of memory).
#   MMB_SLURM_GPUS=2      fake GPUs on the node (0: no GRES)
#   MMB_SLURM_TIMEOUT=90  seconds to wait for a daemon or the node
#   MMB_SLURM_STATE_DIR=/run/mmbalance-slurm
#
# No systemctl anywhere: each daemon is started directly and its pid recorded together
# with its /proc/<pid>/comm, so `stop` never kills a recycled pid or a daemon it did not
# start. Daemons already answering (started by someone else) are used, never stopped.
set -euo pipefail

ACTION=${1:-start}
ACCOUNTING=${MMB_SLURM_ACCOUNTING:-none}
NGPUS=${MMB_SLURM_GPUS:-2}
TIMEOUT=${MMB_SLURM_TIMEOUT:-90}
STATE_DIR=${MMB_SLURM_STATE_DIR:-/run/mmbalance-slurm}
PARTITION=debug
CLUSTER=mmbalance
ACCOUNT=testacct
CONF_DIR=/etc/slurm
GPU_DEV=/dev/mmb-fakegpu
NODE=$(hostname -s)
DB_SOCKET=/run/mysqld/mysqld.sock

say() { echo "[slurm-one-node] $*" >&2; }
fail() { echo "[slurm-one-node] ERROR: $*" >&2; exit 1; }

case $ACCOUNTING in none|slurmdbd) ;; *) fail "MMB_SLURM_ACCOUNTING must be none or slurmdbd, not '$ACCOUNTING'" ;; esac
[ "$(id -u)" = 0 ] || fail "run as root (it installs packages and starts daemons)"

# --- pid records ----------------------------------------------------------------
alive() {  # name: is the daemon we recorded still that process?
    local pid
    pid=$(cat "$STATE_DIR/$1.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
    [ "$(cat "/proc/$pid/comm")" = "$(cat "$STATE_DIR/$1.comm" 2>/dev/null)" ]
}

remember() {  # name pid
    mkdir -p "$STATE_DIR"
    echo "$2" > "$STATE_DIR/$1.pid"
    cat "/proc/$2/comm" > "$STATE_DIR/$1.comm"
}

pid_from_file() {  # file: wait until a daemon wrote its pid file and the process lives
    local i pid
    for ((i = 0; i < TIMEOUT * 5; i++)); do
        pid=$(tr -dc 0-9 < "$1" 2>/dev/null || true)
        if [ -n "$pid" ] && [ -d "/proc/$pid" ]; then echo "$pid"; return 0; fi
        sleep 0.2
    done
    return 1
}

stop_daemon() {  # name [pid file the daemon leaves behind]
    local pid i
    if alive "$1"; then
        pid=$(cat "$STATE_DIR/$1.pid")
        say "stopping $1 (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 150; i++)); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
        if [ -d "/proc/$pid" ]; then say "$1 ignored SIGTERM for 30 s: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
        # A daemon that dropped privileges cannot remove its own pid file; a stale one
        # breaks the next start and Debian's prerm scripts.
        [ -z "${2:-}" ] || rm -f "$2"
    fi
    rm -f "$STATE_DIR/$1.pid" "$STATE_DIR/$1.comm"
}

# --- packages -------------------------------------------------------------------
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }

install_packages() {
    local wanted=(munge slurm-wlm slurmctld slurmd slurm-client) missing=() p
    [ "$ACCOUNTING" = none ] || wanted+=(slurmdbd mariadb-server)
    for p in "${wanted[@]}"; do installed "$p" || missing+=("$p"); done
    [ ${#missing[@]} = 0 ] && return 0
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Wait for another apt run (a concurrent install) instead of failing on its lock.
    apt-get -o DPkg::Lock::Timeout=300 update -qq
    # The packages' own start scripts must not start daemons (this script does, without
    # systemd); a policy-rc.d that forbids it is added only if the machine has none.
    local added_policy=0 rc=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; added_policy=1
    fi
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" > /dev/null || rc=$?
    [ $added_policy = 0 ] || rm -f /usr/sbin/policy-rc.d
    [ $rc = 0 ] || fail "apt-get install ${missing[*]} failed (exit $rc)"
}

# --- configuration ----------------------------------------------------------------
replace_if_changed() {  # path mode owner group < content; prints "changed" when it wrote
    local tmp
    tmp=$(mktemp)
    cat > "$tmp"
    if [ -f "$1" ] && cmp -s "$tmp" "$1"; then rm -f "$tmp"; return 0; fi
    install -m "$2" -o "$3" -g "$4" "$tmp" "$1"
    rm -f "$tmp"
    echo changed
}

field() { sed -n "s/.*\b$1=\([0-9]*\).*/\1/p" <<< "$2"; }

configure() {  # prints "changed" if slurm.conf or gres.conf changed
    install -d -o munge -g munge -m 700 /etc/munge /var/lib/munge /var/log/munge
    install -d -o munge -g munge -m 755 /run/munge
    if [ ! -s /etc/munge/munge.key ]; then
        say "creating a munge key"
        mungekey --create --keyfile=/etc/munge/munge.key --force 2>/dev/null \
            || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
    install -d -o slurm -g slurm -m 755 /var/lib/slurm /var/lib/slurm/slurmctld /var/log/slurm
    install -d -m 755 /var/lib/slurm/slurmd "$CONF_DIR"

    # What slurmd detects; memory a little lower, or the node drains with "Low RealMemory".
    local hw mem
    hw=$(slurmd -C | head -1)
    mem=$(field RealMemory "$hw")
    [ -n "$mem" ] && [ -n "$(field CPUs "$hw")" ] || fail "cannot read the node's hardware from 'slurmd -C': $hw"
    local node_line="NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$(field CPUs "$hw") Boards=$(field Boards "$hw")"
    node_line+=" SocketsPerBoard=$(field SocketsPerBoard "$hw") CoresPerSocket=$(field CoresPerSocket "$hw")"
    node_line+=" ThreadsPerCore=$(field ThreadsPerCore "$hw") RealMemory=$((mem * 95 / 100)) State=UNKNOWN"

    local gres_types=""
    if [ "$NGPUS" -gt 0 ]; then
        gres_types="GresTypes=gpu"
        node_line+=" Gres=gpu:$NGPUS"
        local i
        for ((i = 0; i < NGPUS; i++)); do
            # Slurm sets CUDA_VISIBLE_DEVICES only for GRES backed by a character device;
            # major 240 is reserved for local use, so nothing answers behind it.
            [ -e "$GPU_DEV$i" ] || mknod -m 666 "$GPU_DEV$i" c 240 "$i"
        done
        replace_if_changed "$CONF_DIR/gres.conf" 644 root root <<EOF
# written by ci/slurm-one-node.sh: fake GPUs, no driver behind them
AutoDetect=off
NodeName=$NODE Name=gpu File=$GPU_DEV[0-$((NGPUS - 1))]
EOF
    else
        [ ! -e "$CONF_DIR/gres.conf" ] || { rm -f "$CONF_DIR/gres.conf"; echo changed; }
    fi

    local accounting="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
    [ "$ACCOUNTING" = none ] || accounting="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux"

    # MinJobAge: finished jobs stay visible to squeue for 300 s. The SLURM executor
    # plugin polls with squeue only while MinJobAge >= 3 x its initial status delay.
    replace_if_changed "$CONF_DIR/slurm.conf" 644 root root <<EOF
# written by ci/slurm-one-node.sh: one node, no cgroups, for tests
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
AuthType=auth/munge
CryptoType=crypto/munge
SlurmUser=slurm
SlurmdUser=root
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
ReturnToService=2
MinJobAge=300
KillWait=5
InactiveLimit=0
SlurmdTimeout=60
$accounting
JobCompType=jobcomp/none
$gres_types
$node_line
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

# --- daemons ----------------------------------------------------------------------
start_munge() {
    alive munged && return 0
    if munge -n 2>/dev/null | unmunge > /dev/null 2>&1; then say "munged already answers (not ours): using it"; return 0; fi
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged || fail "munged did not start (/var/log/munge/munged.log)"
    remember munged "$(pid_from_file /run/munge/munged.pid)" || fail "munged wrote no pid file"
    munge -n | unmunge > /dev/null || fail "munge credentials do not round-trip"
}

db_password() {
    [ -s "$CONF_DIR/.mmb-slurmdbd-password" ] \
        || (umask 077; head -c 24 /dev/urandom | base64 | tr -dc A-Za-z0-9 > "$CONF_DIR/.mmb-slurmdbd-password")
    cat "$CONF_DIR/.mmb-slurmdbd-password"
}

start_accounting() {
    local i pid
    if ! alive mariadbd && ! mariadb-admin --socket=$DB_SOCKET ping > /dev/null 2>&1; then
        install -d -o mysql -g mysql -m 755 /run/mysqld
        [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql > /dev/null
        nohup /usr/sbin/mariadbd --user=mysql --datadir=/var/lib/mysql --socket=$DB_SOCKET --skip-networking \
            --pid-file=/run/mysqld/mysqld.pid --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 \
            < /dev/null > /var/log/slurm/mariadbd.log 2>&1 &
        pid=$!
        for ((i = 0; i < TIMEOUT * 5; i++)); do
            mariadb-admin --socket=$DB_SOCKET ping > /dev/null 2>&1 && break
            [ -d /proc/$pid ] || fail "mariadbd exited (/var/log/slurm/mariadbd.log)"
            sleep 0.2
        done
        remember mariadbd "$pid"
    fi
    local pw
    pw=$(db_password)
    mariadb --socket=$DB_SOCKET -u root <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pw';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$pw';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
    replace_if_changed "$CONF_DIR/slurmdbd.conf" 600 slurm slurm > /dev/null <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
PidFile=/run/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=$pw
EOF
    if ! alive slurmdbd; then
        rm -f /run/slurmdbd.pid
        /usr/sbin/slurmdbd || fail "slurmdbd did not start (/var/log/slurm/slurmdbd.log)"
        remember slurmdbd "$(pid_from_file /run/slurmdbd.pid)" || fail "slurmdbd wrote no pid file"
    fi
    for ((i = 0; i < TIMEOUT * 2; i++)); do sacctmgr -n list cluster > /dev/null 2>&1 && break; sleep 0.5; done
    sacctmgr -n -P list cluster format=cluster | grep -qx $CLUSTER || sacctmgr -i add cluster $CLUSTER > /dev/null
    sacctmgr -n -P list account format=account | grep -qx $ACCOUNT \
        || sacctmgr -i add account $ACCOUNT cluster=$CLUSTER description=tests organization=tests > /dev/null
    sacctmgr -n -P list assoc user=root account=$ACCOUNT format=user | grep -qx root \
        || sacctmgr -i add user root account=$ACCOUNT defaultaccount=$ACCOUNT cluster=$CLUSTER > /dev/null
}

start_slurm_daemon() {  # name
    alive "$1" && return 0
    rm -f "/run/$1.pid"
    "/usr/sbin/$1" || fail "$1 did not start (/var/log/slurm/$1.log)"
    remember "$1" "$(pid_from_file "/run/$1.pid")" || fail "$1 wrote no pid file; $(tail -5 "/var/log/slurm/$1.log" 2>/dev/null)"
}

wait_for_node() {
    local i state resumed=0
    for ((i = 0; i < TIMEOUT * 2; i++)); do
        state=$(sinfo -h -N -n "$NODE" -o %t 2>/dev/null | head -1)
        case $state in
            idle|mix|alloc) say "node $NODE is $state, partition $PARTITION"; return 0 ;;
            down*|drain*|drng*|fail*|inval*)
                [ $resumed = 1 ] || scontrol update nodename="$NODE" state=resume > /dev/null 2>&1 || true
                resumed=1 ;;
        esac
        sleep 0.5
    done
    fail "node $NODE not idle after ${TIMEOUT} s (state '${state:-?}', reason: $(sinfo -h -R -o %E 2>/dev/null));
$(tail -5 /var/log/slurm/slurmd.log /var/log/slurm/slurmctld.log 2>/dev/null)"
}

start() {
    local t0=$SECONDS changed
    install_packages
    # errexit is off inside a command substitution unless set there: a failing step must stop here.
    changed=$(set -e; configure)
    if [ -n "$changed" ] && { alive slurmctld || alive slurmd; }; then
        say "configuration changed: restarting slurmd and slurmctld"
        stop_daemon slurmd /run/slurmd.pid; stop_daemon slurmctld /run/slurmctld.pid
    fi
    start_munge
    [ "$ACCOUNTING" = none ] || start_accounting
    start_slurm_daemon slurmctld
    local i
    for ((i = 0; i < TIMEOUT * 2; i++)); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.5; done
    start_slurm_daemon slurmd
    wait_for_node
    say "ready in $((SECONDS - t0)) s (accounting: $ACCOUNTING, fake GPUs: $NGPUS)"
}

stop() {
    stop_daemon slurmd /run/slurmd.pid
    stop_daemon slurmctld /run/slurmctld.pid
    stop_daemon slurmdbd /run/slurmdbd.pid
    stop_daemon mariadbd /run/mysqld/mysqld.pid
    stop_daemon munged /run/munge/munged.pid
    say "stopped what this script started (recorded in $STATE_DIR)"
}

status() {
    local d
    for d in munged mariadbd slurmdbd slurmctld slurmd; do
        if alive $d; then echo "$d: running, pid $(cat "$STATE_DIR/$d.pid")"; else echo "$d: not running (not started by this script)"; fi
    done
    sinfo 2>&1 || true
}

case $ACTION in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) fail "usage: $0 start|stop|status" ;;
esac
