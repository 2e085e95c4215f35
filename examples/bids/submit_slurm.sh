#!/bin/bash
# Submit the participant level as a SLURM job array (one task per participant) and the group level
# to run once every task has ended.
#
#   examples/bids/submit_slurm.sh BIDS_DIR OUTPUT_DIR [MODEL]
#
#   MAX_PARALLEL=50         tasks running at the same time
#   MSNEWLESION_OPTIONS=""  extra options for the participant level ("--session-pairs first" ...)
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: $0 BIDS_DIR OUTPUT_DIR [MODEL]" >&2
    exit 2
fi
BIDS_DIR=$(realpath "$1")
OUTPUT_DIR=$(realpath -m "$2")
MODEL=${3:-demo}
HERE=$(cd "$(dirname "$0")" && pwd)

export LC_ALL=C
count=0
for folder in "$BIDS_DIR"/sub-*/; do
    [ -d "$folder" ] && count=$((count + 1))
done
if [ "$count" -eq 0 ]; then
    echo "no sub-* folders in $BIDS_DIR" >&2
    exit 1
fi

# Once, here (login nodes have network): the tasks then load the model offline from the cache,
# and hundreds of tasks do not download it at the same time.
msnewlesion models download "$MODEL" --quiet

array=$(sbatch --parsable --array=1-"$count"%"${MAX_PARALLEL:-50}" \
    --export=ALL,BIDS_DIR="$BIDS_DIR",OUTPUT_DIR="$OUTPUT_DIR",MODEL="$MODEL" "$HERE/slurm_array.sh")
# afterany: the group level runs even when some participants failed, and lists them as failed.
group=$(sbatch --parsable --dependency=afterany:"$array" --job-name=msnewlesion-group \
    --time=00:30:00 --mem=4G --output=msnewlesion_group_%j.out \
    --wrap "msnewlesion bids '$BIDS_DIR' '$OUTPUT_DIR' group")
echo "submitted job array $array ($count participants) and group job $group"
