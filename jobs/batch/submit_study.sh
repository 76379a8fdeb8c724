#!/bin/bash
# Submits a many-parent fusion study to Slurm: writes the job files, submits the training
# array (one task per parent) and the fuse job, which starts only if every parent trained.
#
#   jobs/batch/submit_study.sh STUDY_DIR N [D LAYERS HEADS MLP EPOCHS CALIBRATION]
# Run from the repository root, with tfuse built in build/ (or TFUSE=/path/to/tfuse-mpi).
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 STUDY_DIR N [D LAYERS HEADS MLP EPOCHS CALIBRATION]" >&2
    exit 2
fi
HERE=$(dirname "$0")
STUDY_DIR=$(realpath -m "$1")
N=$2
"$HERE/study_jobs.sh" "$STUDY_DIR" "$N" "${@:3}"
ARRAY=$(sbatch --parsable --array=0-$((N - 1)) --export=ALL,STUDY_DIR="$STUDY_DIR" \
    "$HERE/train_parents.slurm")
FUSE=$(sbatch --parsable --dependency=afterok:"$ARRAY" --export=ALL,STUDY_DIR="$STUDY_DIR" \
    "$HERE/fuse.slurm")
echo "submitted training array $ARRAY ($N parents) and fuse job $FUSE"
