#!/bin/sh
# One run of `make sweep LAUNCHER=slurm`, as task SLURM_ARRAY_TASK_ID of its job array: line
# SLURM_ARRAY_TASK_ID + 1 of the runs file (`pipeline:seed`), brought to the rounds asked
# for with the binaries already built. The rest of the arguments go to make.
set -eu
runs=$1
shift
line=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" "$runs")
if [ -z "$line" ]; then
    echo "sweep_task.sh: $runs has no line $((SLURM_ARRAY_TASK_ID + 1))" >&2
    exit 2
fi
# The task is a job of its own: its clients train here, in turn, not as further jobs; and
# the submitting make's flags (LAUNCHER=slurm, its jobserver) stay with that make.
unset MAKEFLAGS MFLAGS MAKELEVEL
exec make --no-print-directory round NO_BUILD=1 LAUNCHER=local PIPELINE="${line%:*}" SEED="${line#*:}" "$@"
