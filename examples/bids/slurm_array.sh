#!/bin/bash
#SBATCH --job-name=msnewlesion
#SBATCH --cpus-per-task=4
#SBATCH --mem=8G
#SBATCH --time=02:00:00
#SBATCH --output=msnewlesion_%A_%a.out
#
# One participant per task of a SLURM job array. submit_slurm.sh submits it (and the group level
# after it); by hand:
#
#   export BIDS_DIR=/data/cohort OUTPUT_DIR=/data/cohort/derivatives/msnewlesion MODEL=demo
#   sbatch --array=1-$(ls -d "$BIDS_DIR"/sub-*/ | wc -l)%50 --export=ALL slurm_array.sh
#
# Task N processes the N-th sub-* folder (in C-locale order). All tasks write into the same
# OUTPUT_DIR: each writes only its participant's files and log. A task that fails exits non-zero
# (SLURM marks it FAILED) and its reasons are in OUTPUT_DIR/logs/sub-<label>.log; resubmitting the
# array resumes, since complete pairs are skipped. Extra options go in MSNEWLESION_OPTIONS, for
# example MSNEWLESION_OPTIONS="--session-pairs first --device cuda".
set -euo pipefail
: "${BIDS_DIR:?set BIDS_DIR}" "${OUTPUT_DIR:?set OUTPUT_DIR}" "${SLURM_ARRAY_TASK_ID:?submit as a job array}"
MODEL=${MODEL:-demo}
THREADS=${SLURM_CPUS_PER_TASK:-4}
export OMP_NUM_THREADS=$THREADS ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=$THREADS
# The model was fetched before submitting (submit_slurm.sh does it): compute nodes need no network.
export HF_HUB_OFFLINE=1

export LC_ALL=C
participants=()
for folder in "$BIDS_DIR"/sub-*/; do
    folder=${folder%/}
    participants+=("${folder##*/}")
done
index=$((SLURM_ARRAY_TASK_ID - 1))
if [ "$index" -ge "${#participants[@]}" ]; then
    echo "task $SLURM_ARRAY_TASK_ID: there are only ${#participants[@]} participants" >&2
    exit 1
fi

# shellcheck disable=SC2086  # MSNEWLESION_OPTIONS holds several options
exec msnewlesion bids "$BIDS_DIR" "$OUTPUT_DIR" participant \
    --participant-label "${participants[$index]}" --model "$MODEL" --quiet ${MSNEWLESION_OPTIONS:-}
