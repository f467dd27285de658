#!/usr/bin/env bash
# Bring up a one-node Slurm cluster on this machine (Debian 12, run as root),
# so sbatch/srun (incl. --array) can be tested locally. Safe to run repeatedly.
# No systemd here, so the daemons are started directly.
set -euo pipefail

NODE=$(hostname -s)
CPUS=$(nproc)

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
   || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  # --no-install-recommends skips ~20 unneeded plugin/-dev packages.
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null
fi

# Debian's munge postinst normally creates the key; make sure one exists.
if [ ! -s /etc/munge/munge.key ]; then
  install -d -o munge -g munge -m 700 /etc/munge
  mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
    || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
fi

# slurmctld and slurmd find each other by this host's short name.
getent hosts "$NODE" >/dev/null || echo "127.0.0.1 $NODE" >> /etc/hosts

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
chown slurm:slurm /var/spool/slurmctld /var/log/slurm
chown munge:munge /run/munge

# Without systemd there is no delegated cgroup tree for Slurm's cgroup plugins,
# so track processes via /proc and skip task binding and accounting.
CONF=$(cat <<EOF
ClusterName=local
SlurmctldHost=$NODE
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
NodeName=$NODE CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
)
# Only rewrite (and later reconfigure) when the config actually changed.
CHANGED=0
if [ ! -f /etc/slurm/slurm.conf ] || [ "$CONF" != "$(cat /etc/slurm/slurm.conf)" ]; then
  printf '%s\n' "$CONF" > /etc/slurm/slurm.conf
  CHANGED=1
fi

pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
if pgrep -x slurmctld >/dev/null; then
  # Already running: pick up a changed config without a restart.
  [ "$CHANGED" = 1 ] && scontrol reconfigure >/dev/null 2>&1 || true
else
  slurmctld
fi
pgrep -x slurmd >/dev/null || slurmd

# slurmctld needs a moment before answering and the node must register.
for _ in $(seq 60); do
  state=$(sinfo -h -n "$NODE" -o %t 2>/dev/null || true)
  case "$state" in
    idle|mix|alloc) echo "slurm node $NODE is $state"; exit 0 ;;
    down*|drain*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  sleep 1
done
echo "slurm node $NODE not ready (state: ${state:-none}); see /var/log/slurm/" >&2
exit 1
