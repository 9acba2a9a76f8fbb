#!/usr/bin/env bash
# A one-node, CPU-only SLURM cluster on this machine for CI (Debian's slurm-wlm and munge).
#   .ci/slurm.sh start    install the packages if missing, write the config, start munged,
#                         slurmctld and slurmd, wait until the node is idle
#   .ci/slurm.sh stop     cancel every job, stop the daemons started here (by pid file)
# Needs root. Everything lives under $CI_SLURM_DIR (default /tmp/partial-fc-slurm).
# Partitions: "batch" (default) is preempted by "high" with REQUEUE and a GraceTime of
# $CI_SLURM_GRACE seconds (30): SIGTERM to the job, SIGKILL after the grace time.
set -euo pipefail

DIR=${CI_SLURM_DIR:-/tmp/partial-fc-slurm}
GRACE=${CI_SLURM_GRACE:-30}
PORT=${CI_SLURM_PORT:-6917}
CPUS=$(nproc)
MEM=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)
HOST=$(hostname -s)
CONF=$DIR/slurm.conf
SOCKET=$DIR/munge/munge.socket.2
export SLURM_CONF=$CONF

say() { echo "ci-slurm: $*" >&2; }
die() { say "error: $*"; exit 1; }

pid_of() {  # pidfile -> its pid on stdout; fails when the file is gone (a daemon removes its own on exit)
  local pid
  pid=$(cat "$1" 2>/dev/null) && [[ -n $pid ]] && echo "$pid"
}

running() {  # pidfile: is that process alive?
  local pid
  pid=$(pid_of "$1") && kill -0 "$pid" 2>/dev/null
}

install() {
  local missing=()
  for p in slurm-wlm munge; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  (( ${#missing[@]} )) || return 0
  say "installing ${missing[*]}"
  # no init system here: the packages' postinst must not try to start daemons
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; } \
    > "$DIR/apt.log" 2>&1 || { rm -f /usr/sbin/policy-rc.d; tail -20 "$DIR/apt.log" >&2; die "apt-get failed"; }
  rm -f /usr/sbin/policy-rc.d
}

write_config() {
  cat > "$CONF" <<EOF
ClusterName=partialfc-ci
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: how long a requeued job waits before it may start again (Slurm's default 120 s)
AuthInfo=socket=$SOCKET,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=2
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=3600
InactiveLimit=0
MailProg=/bin/true
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
NodeName=$HOST NodeAddr=127.0.0.1 Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEM State=UNKNOWN
PartitionName=batch Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=$GRACE
PartitionName=high Nodes=ALL Default=NO MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
EOF
}

start() {
  [[ $(id -u) == 0 ]] || die "needs root (slurmd runs jobs as the submitting user)"
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/munge"
  chmod 755 "$DIR" "$DIR/munge"
  install
  write_config
  if ! running "$DIR/munge/munged.pid"; then
    [[ -s $DIR/munge/munge.key ]] || { dd if=/dev/urandom of="$DIR/munge/munge.key" bs=128 count=1 status=none; chmod 600 "$DIR/munge/munge.key"; }
    rm -f "$SOCKET" "$SOCKET.lock"
    munged --socket="$SOCKET" --key-file="$DIR/munge/munge.key" --pid-file="$DIR/munge/munged.pid" \
      --log-file="$DIR/munged.log" --seed-file="$DIR/munge/seed" || die "munged did not start ($DIR/munged.log)"
  fi
  if ! running "$DIR/slurmctld.pid"; then
    rm -rf "$DIR/state" "$DIR/spool" && mkdir -p "$DIR/state" "$DIR/spool"  # no jobs left from an earlier run
    slurmctld -f "$CONF" || die "slurmctld did not start ($DIR/slurmctld.log)"
  fi
  running "$DIR/slurmd.pid" || slurmd -f "$CONF" || die "slurmd did not start ($DIR/slurmd.log)"
  for _ in $(seq 120); do
    [[ $(sinfo -h -N -p batch -o %t 2>/dev/null) =~ ^(idle|mix|alloc)$ ]] && { say "up: $HOST, $CPUS CPUs, grace ${GRACE}s; SLURM_CONF=$CONF"; return 0; }
    sleep 0.5
  done
  sinfo -R >&2 || true
  die "node not idle after 60 s (see $DIR/slurmctld.log, $DIR/slurmd.log)"
}

stop() {
  if running "$DIR/slurmctld.pid"; then
    scancel --full --quiet $(squeue -h -o %i 2>/dev/null) 2>/dev/null || true
    for _ in $(seq 60); do [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break; sleep 0.5; done
  fi
  local f pid
  for f in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/munge/munged.pid"; do
    # the pid read once: the daemon may remove its file while it exits
    pid=$(pid_of "$f") || continue
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$f"
  done
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
