#!/bin/bash
# mpigather on PBS Pro / OpenPBS / Torque: copy this file next to your data as pbs.sh, edit the lines
# marked EDIT, then `qsub pbs.sh`.
#
# First submission: `mpigather run FUNC ... --out OUT`; when OUT's journal (OUT.journal) exists it adds
# --resume, so the same file both starts and continues a run. PBS has no "signal me before the wall
# time" option (Slurm's --signal), so a timer in this script sends the warning itself, WARN_S seconds
# before the wall time: the script tells mpigather to stop, mpigather gives running tasks --grace
# seconds, makes every finished result durable and exits with status 75 ("interrupted, resumable"),
# and the script submits itself again; the next job resumes. Exit 0 (all done), 1 (some tasks
# failed) and 2 (bad input) end the chain.
#
# qdel (and the wall-time kill) send SIGTERM, then SIGKILL after the kill delay (PBS Pro's kill_delay,
# often 10 s): the script forwards it the same way, so finished results are kept, but running tasks
# only finish if they fit in that delay (the rest run again at resume). `qsig -s USR1 JOBID` stops a
# job early in order and resubmits it. End a chain: `touch OUT.stop`, or qdel the follow-up job
# (it waits in the queue, depend=afterany, until this one ends).
#
# PBS reads '#PBS' lines up to the first command; the comment for each is on the line above it.
# EDIT: the job name qstat shows
#PBS -N mpigather
# EDIT: nodes and MPI ranks per node; ranks in all = workers + 1 (rank 0 is the master). Torque: -l nodes=2:ppn=32
#PBS -l select=2:ncpus=32:mpiprocs=32
# EDIT: wall time of one allocation (the chain continues after it)
#PBS -l walltime=04:00:00
# one log for stdout and stderr
#PBS -j oe
# EDIT: remove one '#' to choose a queue
##PBS -q workq
# EDIT: remove one '#' to charge a project
##PBS -A myproject

# ---- the run (EDIT these) ---------------------------------------------------------------------------------
JOB_SCRIPT=pbs.sh                       # EDIT: this file's name in the submit dir (PBS runs a copy; qsub needs the original)
FUNC=mymodule:simulate                  # EDIT: MODULE:FUNC or path/to/file.py:FUNC (relative to the submit dir)
TASKS=(--tasks tasks.jsonl)             # EDIT: (--tasks FILE.jsonl) or (--range N)
OUT=results.h5                          # EDIT: x.h5 for one HDF5 file, or a directory for .npy files
OPTIONS=(--grace 60 --chunk-size 64MiB --prefetch 2)  # EDIT: more options, e.g. --timeout 3600 --retries 1 --mode direct
WARN_S=120                              # EDIT: warning this many seconds before the wall time; more than --grace + the final flush
WALLTIME=""                             # EDIT: only if qstat cannot tell: the wall time as HH:MM:SS, same as the #PBS line
MAX_RESUBMITS=20                        # EDIT: at most this many follow-up jobs (a safety net against a loop)
MPIGATHER=(mpigather)                   # EDIT: the command, e.g. ($HOME/venvs/mpi/bin/mpigather) or (python -m mpigather)
MPIEXEC_ARGS=()                         # EDIT: e.g. (-f "$PBS_NODEFILE") for MPICH without PBS support, (--hostfile "$PBS_NODEFILE") for Open MPI
STOP_SIGNAL=USR1                        # what mpiexec gets; keep USR1: hydra, Open MPI and srun all forward it to every rank
# module load openmpi/4.1 python/3.11   # EDIT: the MPI your mpi4py was built against (docs/cluster.md)
# source "$HOME/venvs/mpi/bin/activate" # EDIT: the Python environment with mpigather installed

# ---- nothing to edit below --------------------------------------------------------------------------------
cd "${PBS_O_WORKDIR:-.}" || exit 2
say() { echo "[$(date '+%F %T') pbs.sh job ${PBS_JOBID:-?}] $*"; }

CHAIN=${MPIGATHER_CHAIN:-0}             # the follow-up jobs before this one in the chain
JOURNAL="${OUT%/}.journal"
STOP_FILE="${OUT%/}.stop"
RESUME=()
[ -e "$JOURNAL" ] && RESUME=(--resume)
if [ -n "${PBS_NODEFILE:-}" ] && [ -r "$PBS_NODEFILE" ]; then
    NP=$(wc -l < "$PBS_NODEFILE")       # one line per MPI slot
else
    NP=${NP:-2}
fi

to_seconds() {                          # [[HH:]MM:]SS -> seconds
    local IFS=: s=0 part
    for part in $1; do s=$((s * 60 + 10#$part)); done
    echo "$s"
}
if [ -z "$WALLTIME" ] && [ -n "${PBS_JOBID:-}" ]; then
    WALLTIME=$(qstat -f "$PBS_JOBID" 2>/dev/null | sed -n 's/^ *Resource_List\.walltime = *//p' | head -n 1)
fi

LAUNCHER=""
SIGNALLED=""
TIMER=""
# shellcheck disable=SC2317  # (called from the traps)
on_signal() {                           # the timer's warning, qsig or qdel: stop in order
    SIGNALLED=$1
    say "got SIG$1: asking mpigather to stop (SIG$STOP_SIGNAL); running tasks get their grace period"
    [ -n "$LAUNCHER" ] && kill -s "$STOP_SIGNAL" "$LAUNCHER" 2>/dev/null
}
trap 'on_signal TERM' TERM
trap 'on_signal USR1' USR1

# shellcheck disable=SC2317
timer() {                               # sleep $1 s, then send SIGUSR1 to this script ($2); ends quietly on SIGTERM
    sleep "$1" &
    local s=$!
    trap 'kill "$s" 2>/dev/null; exit 0' TERM
    wait "$s" && kill -s USR1 "$2"
}
if [ -n "$WALLTIME" ]; then
    DELAY=$(( $(to_seconds "$WALLTIME") - WARN_S ))
    [ "$DELAY" -lt 1 ] && DELAY=1
    timer "$DELAY" $$ &
    TIMER=$!
    say "wall time $WALLTIME: the stop warning comes in $DELAY s"
else
    say "wall time unknown (set WALLTIME): no warning before it; qdel/wall-time SIGTERM still stops in order"
fi

CMD=(mpiexec "${MPIEXEC_ARGS[@]}" -n "$NP" "${MPIGATHER[@]}" run "$FUNC" "${TASKS[@]}" --out "$OUT" "${RESUME[@]}" "${OPTIONS[@]}")
say "allocation $((CHAIN + 1)) of at most $((MAX_RESUBMITS + 1)): ${CMD[*]}"
"${CMD[@]}" &
LAUNCHER=$!
[ -n "$SIGNALLED" ] && kill -s "$STOP_SIGNAL" "$LAUNCHER" 2>/dev/null   # a signal came before mpiexec started
while kill -0 "$LAUNCHER" 2>/dev/null; do
    wait "$LAUNCHER"                    # returns early when a trapped signal arrives; then wait again
done
wait "$LAUNCHER"
RC=$?
[ -n "$TIMER" ] && kill "$TIMER" 2>/dev/null
say "mpigather exited with status $RC"

if [ "$RC" -ne 75 ]; then
    if [ -z "$SIGNALLED" ] || [ "$RC" -le 2 ]; then  # 0 done, 1 some tasks failed, 2 bad input: the chain ends here
        exit "$RC"
    fi
    # the stop signal came while mpigather was starting or already leaving, and ended it: every
    # finished result is still in the journal, so resuming is safe
    say "mpigather ended by the stop signal (status $RC), not in order; resuming is safe all the same"
fi
if [ -e "$STOP_FILE" ]; then
    say "$STOP_FILE exists: not resubmitting; remove it and submit this script again to continue"
    exit "$RC"
fi
if [ "$CHAIN" -ge "$MAX_RESUBMITS" ]; then
    say "resubmitted $CHAIN time(s) already (MAX_RESUBMITS=$MAX_RESUBMITS): stopping; submit again to continue"
    exit "$RC"
fi
if NEXT=$(qsub -v "MPIGATHER_CHAIN=$((CHAIN + 1))" -W "depend=afterany:$PBS_JOBID" "$JOB_SCRIPT"); then
    say "submitted job $NEXT to resume (follow-up $((CHAIN + 1)) of at most $MAX_RESUBMITS)"
else
    say "qsub failed: submit this script again to resume"
fi
exit "$RC"
