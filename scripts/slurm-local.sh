#!/usr/bin/env bash
# A single-node Slurm on this machine (munged + slurmctld + slurmd, Debian's packages, no
# accounting), for the Slurm test of tests/workflow.rs. `.ci/run` starts it and stops it.
#
#   scripts/slurm-local.sh start    # install (apt-get) if needed, start, wait until the node is idle
#   scripts/slurm-local.sh status   # exit 0 when this script's Slurm runs and its node takes jobs
#   scripts/slurm-local.sh stop
#
# Needs root and apt-get (Debian/Ubuntu); no systemd, no cgroups: the daemons are started
# directly, jobs are tracked by process tree (proctrack/linuxproc). The node has this machine's
# CPUs (nproc) and 90% of its memory. State and logs: VIRNUCPRO_SLURM_DIR (default
# /tmp/virnucpro-slurm). The configuration goes to /etc/slurm/slurm.conf, the one place the
# jobs' `srun` finds it (the Slurm executor plugin removes SLURM_CONF from a job's environment);
# a slurm.conf this script did not write is never replaced.
set -euo pipefail

STATE="${VIRNUCPRO_SLURM_DIR:-/tmp/virnucpro-slurm}"
CONF=/etc/slurm/slurm.conf
MARK="# Written by virnucpro scripts/slurm-local.sh"
PACKAGES=(slurmctld slurmd slurm-client munge)

say() { echo "slurm-local.sh: $*" >&2; }
die() {
  say "$*"
  exit 1
}

# A daemon of ours is running: its pid file names a live process.
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

node_state() { sinfo -h -N -n "$(hostname -s)" -o %T 2>/dev/null | head -1; }

ours() { [ -f "$CONF" ] && head -1 "$CONF" | grep -qF "$MARK"; }

install() {
  local missing=()
  command -v munged >/dev/null || missing+=(munge)
  command -v slurmctld >/dev/null || missing+=(slurmctld)
  command -v slurmd >/dev/null || missing+=(slurmd)
  command -v sbatch >/dev/null || missing+=(slurm-client)
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "needs root to install ${missing[*]} (or install ${PACKAGES[*]} yourself)"
  command -v apt-get >/dev/null || die "no apt-get here: install ${PACKAGES[*]} (Slurm 22.05 or newer) yourself"
  say "installing ${missing[*]} (apt-get, about a minute)"
  # The packages' own start scripts must not run (no init system here; they would start
  # daemons with the packages' defaults): policy-rc.d says no to them during the install.
  local policy=/usr/sbin/policy-rc.d added=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && added=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  local ok=
  if apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >"$STATE/apt.log" 2>&1; then
    ok=1
  elif apt-get update -q >>"$STATE/apt.log" 2>&1 &&
    apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >>"$STATE/apt.log" 2>&1; then
    ok=1
  fi
  [ -n "$added" ] && rm -f "$policy"
  [ -n "$ok" ] || die "apt-get install ${PACKAGES[*]} failed; its output: $STATE/apt.log"
}

write_conf() {
  local host cpus mem_mb
  host=$(hostname -s)
  cpus=$(nproc)
  # Slightly below the machine's memory: a node that reports less than configured is drained.
  mem_mb=$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo)
  mkdir -p /etc/slurm
  cat >"$CONF" <<EOF
$MARK for a single-node test cluster (state: $STATE).
# scripts/slurm-local.sh stop removes it.
ClusterName=virnucpro-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$STATE/munge/munge.socket
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
# No systemd, no cgroups (containers): jobs tracked by process tree, no task confinement.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# No slurmdbd: sacct does not work, as on clusters without accounting.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
# Cores and memory are what jobs ask for (--cpus-per-task, --mem), as on most clusters.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# The node as configured here, whatever its topology: never drained for a mismatch.
SlurmdParameters=config_overrides
ReturnToService=2
SlurmdTimeout=60
# A time limit or scancel kills the job 5 s after SIGTERM (default 30).
KillWait=5
# Finished jobs stay visible to squeue this long (Slurm's default): the workflow's status
# checks (slurm-status-command: squeue) need it (README, "Many samples on a cluster").
MinJobAge=300
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
  if (status) >/dev/null 2>&1; then
    say "already running ($CONF)"
    return 0
  fi
  if [ -f "$CONF" ] && ! ours; then
    die "$CONF exists and was not written by this script (a real Slurm?); not touching it"
  fi
  [ "$(id -u)" = 0 ] || die "needs root (it runs the Slurm daemons as root and writes $CONF)"
  stop_daemons
  rm -rf "$STATE"
  mkdir -p "$STATE"/{munge,slurmctld,slurmd}
  chmod 700 "$STATE" "$STATE/munge"
  install

  dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$STATE/munge/munge.key"
  # --force: munged refuses to run as root, or with its files under /tmp, without it.
  munged --force --key-file="$STATE/munge/munge.key" --socket="$STATE/munge/munge.socket" \
    --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/munge/munged.log" \
    --seed-file="$STATE/munge/munged.seed" ||
    die "munged did not start; its log: $STATE/munge/munged.log"

  write_conf
  slurmctld || die "slurmctld did not start; its log: $STATE/slurmctld.log"
  slurmd || die "slurmd did not start; its log: $STATE/slurmd.log"

  local state=
  for _ in $(seq 60); do
    state=$(node_state)
    case "$state" in
      idle*) break ;;
      down* | drain*) scontrol update nodename="$(hostname -s)" state=resume 2>/dev/null || true ;;
    esac
    sleep 1
  done
  case "$state" in
    idle*) say "running: node $(hostname -s), $(nproc) CPUs ($CONF; logs in $STATE)" ;;
    *) die "the node is '${state:-not known to slurmctld}' after 60 s, not idle; logs: $STATE/slurmctld.log, $STATE/slurmd.log" ;;
  esac
}

status() {
  ours || die "not running: no $CONF of this script"
  local d
  for d in munge/munged slurmctld slurmd; do
    alive "$STATE/$d.pid" || die "not running: no ${d#*/} (pid file $STATE/$d.pid)"
  done
  local state
  state=$(node_state)
  case "$state" in
    idle* | mixed* | allocated* | completing*) echo "slurm-local.sh: running, node $(hostname -s) $state" ;;
    *) die "the node is '${state:-unknown}', not taking jobs; logs: $STATE/slurmctld.log, $STATE/slurmd.log" ;;
  esac
}

# Cancels what is left of this cluster's jobs (their processes would outlive the daemons), then
# stops the daemons of this script's pid files, by pid.
stop_daemons() {
  local d pid
  if ours && alive "$STATE/slurmctld.pid" && [ -n "$(squeue -h -o %i 2>/dev/null)" ]; then
    squeue -h -o %i | xargs -r scancel 2>/dev/null || true
    for _ in $(seq 30); do
      [ -z "$(squeue -h -t RUNNING,COMPLETING -o %i 2>/dev/null)" ] && break
      sleep 1
    done
  fi
  for d in slurmd slurmctld munge/munged; do
    alive "$STATE/$d.pid" || continue
    pid=$(cat "$STATE/$d.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  done
}

stop() {
  stop_daemons
  if ours; then rm -f "$CONF"; fi
  say "stopped (logs stay in $STATE)"
}

case "${1:-}" in
  start) start ;;
  status) status ;;
  stop) stop ;;
  *) die "usage: $0 start|status|stop" ;;
esac
