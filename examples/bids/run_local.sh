#!/usr/bin/env bash
# Every participant of a BIDS dataset on one machine, JOBS participants at a time, then the group level.
#
#   examples/bids/run_local.sh BIDS_DIR OUTPUT_DIR [msnewlesion bids options...]
#
#   JOBS=4        participants processed at the same time (default 4)
#   THREADS=N     threads per participant (default: the machine's cores / JOBS)
#   MSNEWLESION   the command to run (default: msnewlesion; for example "python -m msnewlesion")
#
# Exits non-zero when any participant failed (their reasons are in OUTPUT_DIR/logs/); the group level
# runs anyway and lists every pair with its status. Rerunning resumes: complete pairs are skipped.
set -uo pipefail

if [ $# -lt 2 ]; then
    echo "usage: $0 BIDS_DIR OUTPUT_DIR [msnewlesion bids options...]" >&2
    exit 2
fi
BIDS_DIR=$1
OUTPUT_DIR=$2
shift 2
JOBS=${JOBS:-4}
CORES=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 4)
THREADS=${THREADS:-$(( CORES / JOBS > 0 ? CORES / JOBS : 1 ))}
# One participant per process; each process uses THREADS cores (torch and ITK/antspyx).
export OMP_NUM_THREADS=$THREADS ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=$THREADS
MSNEWLESION=${MSNEWLESION:-msnewlesion}

export LC_ALL=C
for folder in "$BIDS_DIR"/sub-*/; do
    folder=${folder%/}
    echo "${folder##*/}"
done | xargs -P "$JOBS" -I{} $MSNEWLESION bids "$BIDS_DIR" "$OUTPUT_DIR" participant --participant-label {} --quiet "$@"
participants=$?   # xargs: 123 when any participant failed

$MSNEWLESION bids "$BIDS_DIR" "$OUTPUT_DIR" group "$@"
group=$?

if [ "$participants" -ne 0 ]; then
    echo "some participants failed: see $OUTPUT_DIR/logs/ and $OUTPUT_DIR/group_newlesions.html" >&2
    exit 1
fi
exit "$group"
