# --- Preemption-safe resume -----------------------------------------------------------------------------------
# SLURM signals this shell (B:USR1) {{signal_seconds}} s before the time limit; `scancel --signal=USR1 --batch JOBID`
# does the same by hand. The trap forwards USR1 to the medtf process: a training's PreemptionCallback saves a backup
# at the end of the current batch and stops (a conversion task just stops: its finished cases are on disk); this
# script then requeues the job (#SBATCH --requeue) and the next start resumes: a training from $RUN_DIR/backup
# (BackupAndRestore), losing at most the unfinished part of one epoch; a conversion at its first unfinished case.
MEDTF_PREEMPTED=0
MEDTF_CHILD=
MEDTF_MAX_REQUEUES={{max_requeues}}
medtf_on_usr1() {
  MEDTF_PREEMPTED=1
  echo "medtf-slurm: USR1 at $(date -Is): asking medtf to stop (a training saves a backup first)"
  if [[ -n $MEDTF_CHILD ]]; then kill -USR1 "$MEDTF_CHILD" 2>/dev/null || true; fi
}
trap medtf_on_usr1 USR1

# run_resumable COMMAND...: run COMMAND in the background (bash runs traps only between commands, and `wait`
# is interruptible), then requeue this job when it was preempted before the run finished.
run_resumable() {
  local restarts=${SLURM_RESTART_COUNT:-0} rc=0
  echo "medtf-slurm: job ${SLURM_JOB_ID} start $((restarts + 1)) on $(hostname -s) at $(date -Is)"
  "$@" &
  MEDTF_CHILD=$!
  while true; do
    wait "$MEDTF_CHILD" && rc=0 || rc=$?
    kill -0 "$MEDTF_CHILD" 2>/dev/null || break  # a trapped signal ended `wait` early: the child still runs
  done
  MEDTF_CHILD=
  # A run that finished removes its backup folder; a saved backup (or a child killed by the signal) means "resume".
  if [[ $MEDTF_PREEMPTED == 1 && ( -f $RUN_DIR/backup/training_metadata.json || $rc -ge 128 ) ]]; then
    if (( restarts >= MEDTF_MAX_REQUEUES )); then
      echo "medtf-slurm: preempted but already requeued $restarts times; giving up (resubmit to continue)" >&2
      return 3
    fi
    echo "medtf-slurm: requeueing job ${SLURM_JOB_ID} (exit $rc); the next start resumes where this one stopped"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  return "$rc"
}
