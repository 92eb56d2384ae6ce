#!/bin/bash
# sweep.py --executor slurm on a one-node Slurm cluster started on this machine (Debian 12, as root), then stopped.
#   bash results/slurm_one_node/run.sh 2>&1 | tee results/slurm_one_node/output.txt     # from the repository root
# Installs slurm-wlm and munge with apt, starts munged, slurmctld and slurmd, runs the toy's smoke preset (two
# methods x two seeds, 3,000 steps a task so that a job can be caught mid-run) through sbatch, stops two running
# jobs the two ways a cluster does (a preemption-style USR2 signal, which submitit turns into checkpoint() and a
# requeue; and `scontrol requeue`), lets them resume, aggregates, compares the summaries with the same grid run
# by the local executor, and stops the daemons. Runs go to $OUT (default /tmp/slurm_one_node), not committed.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/slurm_one_node}
HOST=$(hostname)
GRID=(toy --preset smoke --methods replay tr --seeds 0 1 --status-every 15)
EXTRA=(-- --steps-per-task 3000)
step() { echo; echo "== $(date -u +%H:%M:%S) $*"; }

step "install"
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
slurmctld -V; munged --version | head -1
echo "commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- sweep.py train_toy.py experiment.py || echo ' (sweep/toy files modified)'), $(nproc) cores, $(python -c 'import submitit; print("submitit", submitit.__version__)')"

step "munge"
mkdir -p /etc/munge /run/munge /var/log/munge /var/lib/munge
[ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
chmod 400 /etc/munge/munge.key
runuser -u munge -- /usr/sbin/munged
munge -n | unmunge | grep STATUS

step "slurm.conf and daemons"
mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > /etc/slurm/slurm.conf <<EOF
ClusterName=onenode
SlurmctldHost=$HOST
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmUser=root
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ReturnToService=2
NodeName=$HOST CPUs=$(nproc) RealMemory=20000 State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
grep -v '^#' /etc/slurm/slurm.conf
stop_daemons() {
    step "stop the daemons"
    for pidfile in /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid; do
        pid=$(cat "$pidfile" 2>/dev/null || true)
        [ -n "$pid" ] && kill "$pid" && echo "stopped $(basename "$pidfile" .pid) (process $pid)"
    done
}
trap stop_daemons EXIT
slurmctld
slurmd
for _ in $(seq 60); do sinfo -h -o %T | grep -q idle && break; sleep 1; done
sinfo

step "the sweep through sbatch, in the background: ${GRID[*]} --executor slurm ${EXTRA[*]}"
rm -rf "$OUT"
python sweep.py "${GRID[@]}" --executor slurm --cpus-per-run 1 --time-min 30 --out-root "$OUT/slurm" "${EXTRA[@]}" \
    > "$OUT.sweep.txt" 2>&1 &
SWEEP=$!
job_of() { tr -d '"\n' < "$OUT/slurm/toy-smoke/slurm/$1.job"; }
wait_task2() {  # until run $1 logs a training step of its second task
    until grep -q '"kind": "train", "global_step": [0-9]*, "task": 1' \
        "$OUT/slurm/toy-smoke-$1/$1/metrics.jsonl" 2>/dev/null; do sleep 0.5; done
}
wait_task2 replay-s0
JOB=$(job_of replay-s0)
step "replay-s0 (job $JOB) is in task 2: scancel --signal=USR2 (what Slurm sends before a preemption or the time limit)"
squeue
scancel --signal=USR2 "$JOB"
wait_task2 tr-s0
JOB2=$(job_of tr-s0)
step "tr-s0 (job $JOB2) is in task 2: scontrol requeue"
scontrol requeue "$JOB2"
sleep 2
squeue
wait $SWEEP && echo "sweep exit code 0" || echo "sweep exit code $?"

step "the sweep's output"
cat "$OUT.sweep.txt"
for run in replay-s0 tr-s0; do
    step "$run: its log (each attempt after a === line; the toy's own lines only)"
    grep -E '^===|resuming|interrupted|seed [0-9]: average' "$OUT/slurm/toy-smoke-$run/sweep.log" | cut -c1-200
done
step "submitit's log of job $JOB (replay-s0): the signal, checkpoint and requeue"
grep -hE 'Caught signal|REQUEUE|Terminated|Exiting|completed' "$OUT"/slurm/toy-smoke/slurm/"${JOB}"_*log.err \
    | cut -c1-160 || true

step "the same grid with the local executor, for comparison"
python sweep.py "${GRID[@]}" --jobs 2 --out-root "$OUT/local" "${EXTRA[@]}" | tail -12
python - "$OUT" <<'EOF'
import json, os, sys
out, same = sys.argv[1], []
VOLATILE = ("time", "wall", "host", "date", "seconds", "started", "ended", "pid")  # when and where, if recorded
def numbers(path):
    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if not any(w in k.lower() for w in VOLATILE)}
        return [strip(v) for v in x] if isinstance(x, list) else x
    return strip(json.load(open(path)))
for m in ("replay", "tr"):
    for s in (0, 1):
        for name in ("summary.json", "sw/summary.json"):
            a, b = (numbers(os.path.join(out, ex, f"toy-smoke-{m}-s{s}", f"{m}-s{s}", name))
                    for ex in ("slurm", "local"))
            same.append(a == b)
print(f"summaries identical, slurm (two jobs stopped and requeued) vs local: {sum(same)} of {len(same)}")
EOF
