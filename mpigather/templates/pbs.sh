#!/bin/bash
# mpigather on PBS Pro / OpenPBS / Torque: write this file next to your data as pbs.sh
# (`mpigather template pbs > pbs.sh`), edit the lines marked EDIT, then `qsub pbs.sh`.
#
# The same file starts a run and continues it: when OUT's journal (OUT.journal) exists it passes --resume.
# A run longer than one allocation becomes a chain of jobs:
#  - Each job first queues its follow-up (qsub -W depend=afterany:THIS_JOB), so that even a job killed
#    at the wall time, or by SIGKILL, has a successor that resumes the run.
#  - PBS has no "signal me before the wall time" option (Slurm's --signal), so a timer in this script
#    sends the warning itself, WARN_S seconds before the wall time: the script tells mpigather to stop,
#    mpigather gives running tasks --grace seconds, makes every finished result durable and exits 75
#    ("interrupted, resumable"). This job ends, and the follow-up starts and resumes.
#  - Exit 0 (all done), 1 (some tasks failed) or 2 (bad input) ends the chain: the script deletes the
#    follow-up. A follow-up that finds the run finished exits 0 at once.
#
# Stopping a run:
#   qdel JOB                 ends the chain: the follow-up is deleted, and mpigather stops in order if its
#                            running tasks end within the kill delay (PBS Pro's kill_delay, often 10 s;
#                            the others run again next time). Every finished result is kept.
#   qsig -s USR1 JOB         stops in order now, like the warning; the follow-up continues the run.
#   touch OUT.stop           the running job finishes its allocation, then the chain ends.
# qdel and the wall-time kill both send SIGTERM (then SIGKILL after the kill delay): the script takes a
# SIGTERM that comes within a minute of the wall time for the kill (the chain goes on), any other for
# a qdel. Without a known wall time (WALLTIME below, or qstat) every SIGTERM counts as a qdel.
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

run_finished() {                        # does OUT's journal say that the run ended (not interrupted)?
    "${MPIGATHER[@]}" status --json "$OUT" 2>/dev/null | grep -q '"state": "finished"'
}

# ---- a follow-up first checks that the chain should go on ----
# (PBS releases an afterany dependent only once its predecessor has exited, so a qdel'ed job always
# deletes its follow-up before the follow-up could start)
if [ "$CHAIN" -gt 0 ]; then
    if [ -e "$STOP_FILE" ]; then
        say "$STOP_FILE exists: the chain ends here; remove it and submit this script again to continue"
        exit 0
    fi
    if run_finished; then
        say "$OUT is finished already: nothing to do"
        exit 0
    fi
fi

to_seconds() {                          # [[HH:]MM:]SS -> seconds
    local IFS=: s=0 part
    for part in $1; do s=$((s * 60 + 10#$part)); done
    echo "$s"
}
if [ -z "$WALLTIME" ] && [ -n "${PBS_JOBID:-}" ]; then
    WALLTIME=$(qstat -f "$PBS_JOBID" 2>/dev/null | sed -n 's/^ *Resource_List\.walltime = *//p' | head -n 1)
fi
WALL_S=""
[ -n "$WALLTIME" ] && WALL_S=$(to_seconds "$WALLTIME")

# ---- queue the follow-up now, so that the chain survives a kill of this job ----
NEXT=""
submit_next() {
    if NEXT=$(qsub -v "MPIGATHER_CHAIN=$((CHAIN + 1))" -W "depend=afterany:$PBS_JOBID" "$JOB_SCRIPT"); then
        say "queued job $NEXT to continue the run after this one (follow-up $((CHAIN + 1)) of at most $MAX_RESUBMITS)"
    else
        NEXT=""
        say "qsub failed: no follow-up job; submit this script again to continue"
    fi
}
cancel_next() {
    [ -n "$NEXT" ] || return 0
    say "deleting the follow-up job $NEXT"
    qdel "$NEXT" || say "qdel $NEXT failed: delete it yourself"
    NEXT=""
}

# ---- signals: USR1 = stop in order and continue; TERM = qdel (stop, end the chain) or the wall time ----
LAUNCHER=""
STOP=""                                 # why mpigather was asked to stop: warning, cancel or walltime
TIMER=""
stop_mpigather() { [ -n "$LAUNCHER" ] && kill -s "$STOP_SIGNAL" "$LAUNCHER" 2>/dev/null; }
# shellcheck disable=SC2317  # (called from the traps)
on_usr1() {
    [ -n "$STOP" ] || STOP=warning
    say "got SIGUSR1 (the timer's warning, or qsig -s USR1): asking mpigather to stop in order (SIG$STOP_SIGNAL)"
    stop_mpigather
}
# shellcheck disable=SC2317
on_term() {
    stop_mpigather                      # first: the ranks may have their own SIGTERM already, and leave soon
    if [ -n "$WALL_S" ] && [ "$SECONDS" -ge $((WALL_S - 60)) ]; then
        STOP=walltime
        say "got SIGTERM at the wall time: PBS kills this job after its kill delay; finished results are kept, and the chain continues"
    else
        STOP=cancel
        say "got SIGTERM (qdel): mpigather stops in order if it can before the kill delay ends; the chain ends here"
        cancel_next
    fi
}
trap on_usr1 USR1
trap on_term TERM

# shellcheck disable=SC2317
timer() {                               # sleep $1 s, then send SIGUSR1 to this script ($2); ends quietly on SIGTERM
    sleep "$1" &
    local s=$!
    trap 'kill "$s" 2>/dev/null; exit 0' TERM
    wait "$s" && kill -s USR1 "$2"
}
if [ -n "$WALL_S" ]; then
    DELAY=$((WALL_S - WARN_S))
    [ "$DELAY" -lt 1 ] && DELAY=1
    timer "$DELAY" $$ &
    TIMER=$!
    say "wall time $WALLTIME: the stop warning comes in $DELAY s"
else
    say "wall time unknown (set WALLTIME): no warning before it, and a SIGTERM counts as qdel (the chain ends)"
fi

if [ -e "$STOP_FILE" ]; then
    say "$STOP_FILE exists: no follow-up job; this allocation is the last"
elif [ "$CHAIN" -ge "$MAX_RESUBMITS" ]; then
    say "resubmitted $CHAIN time(s) already (MAX_RESUBMITS=$MAX_RESUBMITS): no follow-up job; submit again to continue"
elif [ "$STOP" != cancel ]; then
    submit_next
fi

CMD=(mpiexec "${MPIEXEC_ARGS[@]}" -n "$NP" "${MPIGATHER[@]}" run "$FUNC" "${TASKS[@]}" --out "$OUT" "${RESUME[@]}" "${OPTIONS[@]}")
say "allocation $((CHAIN + 1)) of at most $((MAX_RESUBMITS + 1)): ${CMD[*]}"
"${CMD[@]}" &
LAUNCHER=$!
[ -n "$STOP" ] && stop_mpigather        # a signal came before mpiexec started
while kill -0 "$LAUNCHER" 2>/dev/null; do
    wait "$LAUNCHER"                    # returns early when a trapped signal arrives; then wait again
done
wait "$LAUNCHER"
RC=$?
[ -n "$TIMER" ] && kill "$TIMER" 2>/dev/null
say "mpigather exited with status $RC"

# ---- continue the chain only after an interruption that was not a qdel ----
if [ "$RC" -le 2 ]; then                # 0 done, 1 some tasks failed, 2 bad input
    cancel_next
    exit "$RC"
fi
case "$STOP" in
    cancel)
        cancel_next
        exit "$RC" ;;
    "")
        if [ "$RC" -ne 75 ]; then       # mpigather failed on its own (3, or a rank was killed)
            say "mpigather failed (status $RC) without a stop request: the chain ends here; the run resumes when submitted again"
            cancel_next
            exit "$RC"
        fi ;;
    *)
        # a stop signal that came while mpigather was starting or leaving can end it with another
        # status; every finished result is in the journal all the same, so resuming is safe
        if [ "$RC" -ne 75 ] && run_finished; then
            say "mpigather ended by the stop signal (status $RC) as it was leaving a finished run: all done"
            cancel_next
            exit 0
        fi
        [ "$RC" -eq 75 ] || say "mpigather ended by the stop signal (status $RC), not in order; resuming is safe all the same" ;;
esac
if [ -e "$STOP_FILE" ]; then
    say "$STOP_FILE exists: the chain ends here; remove it and submit this script again to continue"
    cancel_next
    exit "$RC"
fi
if [ -n "$NEXT" ]; then
    say "job $NEXT continues the run"
elif [ "$CHAIN" -ge "$MAX_RESUBMITS" ]; then
    say "resubmitted $CHAIN time(s) already (MAX_RESUBMITS=$MAX_RESUBMITS): stopping; submit again to continue"
else
    submit_next                         # the one queued at the start failed: try again
fi
exit "$RC"
