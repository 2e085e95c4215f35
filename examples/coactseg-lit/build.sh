#!/usr/bin/env bash
# Build the built-in `coactseg-lit` model from the LIT data with msnewlesion's own commands:
# synth (acquisition-aware pairs, null pairs, pairs with enlarging lesions) → preprocess (with three labels)
# → train in two stages (from the demo model, then on everything) → the checks of README.md beside this file.
#
#   examples/coactseg-lit/build.sh [WORK_DIR]
#
# Environment: DATA (the LIT folder; default tests/data/lit), JOBS (parallel jobs, default 2), DEVICE (auto,
# cpu, cuda), PAIRS (training pairs with new lesions, default 64), NULL_PAIRS (default 24), GROW_PAIRS (pairs
# with enlarging lesions too, default 48), VAL_PAIRS (default 4, plus 2 null and 2 with enlarging lesions),
# TIME_LIMIT (minutes of each training stage), TRAIN_FLAGS (extra flags for `msnewlesion train`),
# FROM_STAGE / UNTIL_STAGE (stages 1-5). Every step is seeded.
#
# The real raw longitudinal pair (lit/longitudinal/patient01) is NEVER used here: it is the validation pair
# of benchmarks/lit_longitudinal.py. LIT patient 26 and the lesion shapes of patients 17-30 are kept out too:
# they make the held-out checks.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
DATA="${DATA:-$root/tests/data/lit}"
WORK="${1:-work-coactseg-lit}"
JOBS="${JOBS:-2}"
DEVICE="${DEVICE:-auto}"
PAIRS="${PAIRS:-64}"
NULL_PAIRS="${NULL_PAIRS:-24}"
GROW_PAIRS="${GROW_PAIRS:-48}"
VAL_PAIRS="${VAL_PAIRS:-4}"
TRAIN_FLAGS="${TRAIN_FLAGS:-}"
MSNEWLESION="${MSNEWLESION:-msnewlesion}"
FROM_STAGE="${FROM_STAGE:-1}"
UNTIL_STAGE="${UNTIL_STAGE:-5}"
export ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1 MSNEWLESION
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
started=$(date +%s)
stamp() { echo "[$(( $(date +%s) - started )) s] $*"; }
stage() { (( $1 >= FROM_STAGE && $1 <= UNTIL_STAGE )); }

library=()
for mask in "$DATA"/lesion_masks/patient*.nii.gz; do
    number=$(basename "$mask" .nii.gz); number=${number#patient}
    (( 10#$number <= 16 )) && library+=(--library "$mask")
done
scan="$DATA/cross_sectional/patient07"
# each time point its own acquisition; a residual misregistration of up to 1.5 mm / 2°; contrasts from
# subtle to bright; no extra noise (the acquisition adds Rician noise)
common=(--acquisition --max-rotation 2 --max-translation 1.5 --noise 0 --quiet)

synth_in_chunks() {  # folder prefix, subject, number of pairs, seed, synth flags: JOBS runs side by side
    local prefix=$1 subject=$2 total=$3 seed=$4 first count pids=()
    local chunk=$(( (total + JOBS - 1) / JOBS ))
    for (( first = 0; first < total; first += chunk )); do
        count=$(( total - first < chunk ? total - first : chunk ))
        $MSNEWLESION synth "$scan/flair.nii.gz" "$scan/lesions.nii.gz" "${library[@]}" -o "$WORK/synth/$prefix$first" \
            --subject "$subject" --start "$first" --pairs "$count" --seed "$seed" --mode both "${@:5}" "${common[@]}" \
            > /dev/null &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
}

if stage 1; then
    stamp "1/5 synthetic pairs: $PAIRS with new lesions, $NULL_PAIRS null, $VAL_PAIRS + 2 for validation"
    synth_in_chunks chunk train "$PAIRS" 2000 --removed 4 --added 4 --contrast 1.4 --contrast-spread 0.2
    pids=()
    $MSNEWLESION synth "$scan/flair.nii.gz" "$scan/lesions.nii.gz" -o "$WORK/synth/null" --subject null \
        --pairs "$NULL_PAIRS" --seed 3000 --mode none "${common[@]}" > /dev/null &
    pids+=($!)
    $MSNEWLESION synth "$scan/flair.nii.gz" "$scan/lesions.nii.gz" "${library[@]}" -o "$WORK/synth/val" \
        --subject val --split val --pairs "$VAL_PAIRS" --seed 6000 --mode both "${common[@]}" > /dev/null &
    pids+=($!)
    for pid in "${pids[@]}"; do wait "$pid"; done
    $MSNEWLESION synth "$scan/flair.nii.gz" "$scan/lesions.nii.gz" -o "$WORK/synth/val" --subject valnull \
        --split val --pairs 2 --seed 7000 --mode none "${common[@]}" > /dev/null
    # enlarging lesions (a lesion at both time points that grows) and subtler contrasts, as real change masks hold
    synth_in_chunks grow grow "$GROW_PAIRS" 4000 --removed 2 --added 2 --enlarged 3 --contrast 1.35 \
        --contrast-spread 0.25
    $MSNEWLESION synth "$scan/flair.nii.gz" "$scan/lesions.nii.gz" "${library[@]}" -o "$WORK/synth/val" \
        --subject valgrow --split val --pairs 2 --seed 8000 --mode both --removed 1 --added 1 --enlarged 3 \
        --contrast 1.35 --contrast-spread 0.25 "${common[@]}" > /dev/null
fi

if stage 2; then
    stamp "2/5 preprocessing: 1 mm RAS, z-score in the brain, the three labels carried"
    preprocess_one() {
        pair="$1"; out="$2"
        [ -f "$out/preprocess.json" ] && return 0
        $MSNEWLESION preprocess "$pair/baseline.nii.gz" "$pair/followup.nii.gz" -o "$out" --space none \
            --skull-strip none --no-bias-correction \
            --followup-label "new_lesions=$pair/new_lesions.nii.gz" \
            --baseline-label "lesions_baseline=$pair/lesions_baseline.nii.gz" \
            --followup-label "lesions_followup=$pair/lesions_followup.nii.gz" --quiet > /dev/null
    }
    export -f preprocess_one
    for pair in "$WORK"/synth/*/*/; do
        [ -f "$pair/synth.json" ] && printf '%s\0%s\0' "${pair%/}" "$WORK/prep/$(basename "$pair")"
    done | xargs -0 -n 2 -P "$JOBS" bash -c 'preprocess_one "$0" "$1"'
    [ -f "$WORK/prep/patient07-real/preprocess.json" ] || $MSNEWLESION preprocess "$scan/flair.nii.gz" \
        "$scan/flair.nii.gz" -o "$WORK/prep/patient07-real" --space none --skull-strip none --no-bias-correction \
        --baseline-label "lesions=$scan/lesions.nii.gz" --quiet > /dev/null
fi

manifest="$WORK/manifest.csv"
if stage 3; then
    stamp "3/5 training manifest"
    {
        echo "subject,kind,baseline,followup,label,brain_mask,split,baseline_lesions,followup_lesions"
        for prep in "$WORK"/prep/train-* "$WORK"/prep/null-* "$WORK"/prep/grow-* "$WORK"/prep/val*; do
            name=$(basename "$prep"); split=train; [[ $name == val* ]] && split=val
            p="prep/$name"
            echo "$name,longitudinal,$p/baseline.nii.gz,$p/followup.nii.gz,$p/new_lesions.nii.gz,$p/brain_mask.nii.gz,$split,$p/lesions_baseline.nii.gz,$p/lesions_followup.nii.gz"
        done
        p=prep/patient07-real
        echo "patient07-real,single,$p/baseline.nii.gz,,$p/lesions.nii.gz,$p/brain_mask.nii.gz,train,,"
    } > "$manifest"
    $MSNEWLESION train "$manifest" -o "$WORK/run" --dry-run --quiet
fi

train_stage() {  # run folder, config, manifest, extra flags
    time_limit=()
    [ -n "${TIME_LIMIT:-}" ] && time_limit=(--time-limit "$TIME_LIMIT")
    resume=(--overwrite)
    [ -f "$1/last/training_state.pt" ] && resume=(--resume)
    # shellcheck disable=SC2086
    $MSNEWLESION train "$3" -o "$1" --config "$2" --device "$DEVICE" "${resume[@]}" "${time_limit[@]}" \
        "${@:4}" $TRAIN_FLAGS --quiet
}
if stage 4; then
    # stage A: from the demo model, on the pairs with new lesions and the null pairs
    stamp "4/5 training, stage A"
    grep -v "^grow-\|^valgrow-" "$manifest" > "$WORK/manifest-a.csv"
    train_stage "$WORK/run" "$here/train.yaml" "$WORK/manifest-a.csv"
fi
if stage 5; then
    # stage B: from stage A's last model, on everything (the pairs with enlarging lesions too)
    stamp "5/5 training, stage B"
    train_stage "$WORK/run-b" "$here/train-b.yaml" "$manifest" --init-from "$WORK/run/last"
fi
stamp "done: model folders in $WORK/run-b/best and $WORK/run-b/last"
