#!/bin/bash
# Writes the job files of a many-parent fusion study into DIR:
#   DIR/parent-K.json  (K = 0 .. N-1): train one ViT parent from seed K + 1
#   DIR/fuse.json      : fuse the N parents with exact OT (joint stream map) and with
#                        Sinkhorn plus statistics repair, then write models and a report
# Used by the Slurm and PBS scripts beside this file; run it by hand to inspect the jobs.
#
#   jobs/batch/study_jobs.sh DIR N [D LAYERS HEADS MLP EPOCHS CALIBRATION]
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 DIR N [D LAYERS HEADS MLP EPOCHS CALIBRATION]" >&2
    exit 2
fi
DIR=$1 N=$2 D=${3:-384} LAYERS=${4:-6} HEADS=${5:-6} MLP=${6:-1536} EPOCHS=${7:-6}
CALIBRATION=${8:-1024}
if [ "$N" -lt 2 ] || [ "$N" -gt 64 ]; then
    echo "error: N = $N parents; a fuse job takes 2 to 64" >&2
    exit 2
fi
mkdir -p "$DIR/models" "$DIR/fused"
MODEL="\"architecture\": \"vit\", \"image_size\": 28, \"channels\": 1, \"patch\": 7,
      \"d\": $D, \"layers\": $LAYERS, \"heads\": $HEADS, \"mlp\": $MLP, \"classes\": 10"
for k in $(seq 0 $((N - 1))); do
    cat > "$DIR/parent-$k.json" <<JSON
{
  "description": "Parent $k of $N of the fusion study.",
  "tasks": [
    {
      "task": "train", "name": "parent-$k",
      "model": { $MODEL },
      "epochs": $EPOCHS, "batch_size": 128, "seed": $((k + 1)), "log_every": 200,
      "output": "$DIR/models/parent-$k.h5", "overwrite": true
    }
  ]
}
JSON
done
PARENTS=""
for k in $(seq 0 $((N - 1))); do
    if [ "$k" -gt 0 ]; then PARENTS="$PARENTS, "; fi
    PARENTS="$PARENTS\"$DIR/models/parent-$k.h5\""
done
cat > "$DIR/fuse.json" <<JSON
{
  "description": "Fusion of the $N parents of the study.",
  "tasks": [
    {
      "task": "fuse", "name": "study",
      "parents": [ $PARENTS ],
      "calibration_samples": $CALIBRATION,
      "methods": [
        { "name": "vanilla", "method": "vanilla" },
        { "name": "ot-exact", "method": "ot", "solver": "exact", "residual": "joint" },
        { "name": "ot-sinkhorn-repair", "method": "ot", "solver": "sinkhorn",
          "residual": "joint", "repair": "all" }
      ],
      "finetune": { "steps": 500 },
      "output_dir": "$DIR/fused", "report": "$DIR/report.json", "overwrite": true
    }
  ]
}
JSON
echo "wrote $N parent jobs and $DIR/fuse.json"
