#!/usr/bin/env bash
# Build the `coactseg-real` model: CoactSeg learnt from the real annotated FLAIRs of three sites (LIT, MSLesSeg,
# Tabriz), each a single-time-point sample for the all-lesion heads AND the source of synthetic pairs for the
# new-lesion head (its own real lesions in-painted away at baseline, library lesions added, each time point its own
# simulated acquisition), with msnewlesion's own commands only.
#
#   examples/coactseg-real/build.sh [WORK_DIR]
#
# Environment: DATA (the shared data folder holding lit/, mslesseg/, tabriz/; default tests/data), JOBS (parallel
# jobs, default 2), DEVICE (auto, cpu, cuda), INIT_FROM (the model the training starts from; default the
# experimental examples/coactseg-lit/stage-b), ITERATIONS, TIME_LIMIT (minutes), TRAIN_FLAGS, FROM_STAGE / UNTIL_STAGE
# (stages 1-5). Every step is seeded; a stage whose outputs exist is skipped, and training resumes (--resume).
#
# Held out of ALL training, for choosing the model (validation) and for the checks of README.md beside this file:
#   - one annotated scan per site: LIT patient 26, MSLesSeg P39, Tabriz 105911 (and the LIT lesion shapes 17-30);
#   - the real raw longitudinal pair LIT patient01 (validation only, benchmarks/lit_longitudinal.py);
#   - the three raw unlabelled LIT scans (lit/longitudinal_singles: each fed against itself, the truth is zero).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
DATA="${DATA:-$root/../shared/data}"
WORK="${1:-work-coactseg-real}"
JOBS="${JOBS:-2}"
DEVICE="${DEVICE:-auto}"
INIT_FROM="${INIT_FROM:-$root/examples/coactseg-lit/stage-b}"
TRAIN_FLAGS="${TRAIN_FLAGS:-}"
MSNEWLESION="${MSNEWLESION:-msnewlesion}"
PYTHON="${PYTHON:-python}"
FROM_STAGE="${FROM_STAGE:-1}"
UNTIL_STAGE="${UNTIL_STAGE:-5}"
export ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1 MSNEWLESION PYTHON
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
started=$(date +%s)
stamp() { echo "[$(( $(date +%s) - started )) s] $*"; }
stage() { (( $1 >= FROM_STAGE && $1 <= UNTIL_STAGE )); }

# name, site, role, flair, lesions: every real annotated scan and whether it trains or chooses (val)
scans=(
    "lit-p07 lit train $DATA/lit/cross_sectional/patient07/flair.nii.gz $DATA/lit/cross_sectional/patient07/lesions.nii.gz"
    "lit-p26 lit val $DATA/lit/cross_sectional/patient26/flair.nii.gz $DATA/lit/cross_sectional/patient26/lesions.nii.gz"
    "mslesseg-p18 mslesseg train $DATA/mslesseg/P18_T1_FLAIR.nii.gz $DATA/mslesseg/P18_T1_MASK.nii.gz"
    "mslesseg-p39 mslesseg val $DATA/mslesseg/P39_T1_FLAIR.nii.gz $DATA/mslesseg/P39_T1_MASK.nii.gz"
    "tabriz-104252 tabriz train $DATA/tabriz/104252_flair.nii.gz $DATA/tabriz/104252_lesions.nii.gz"
    "tabriz-105074 tabriz train $DATA/tabriz/105074_flair.nii.gz $DATA/tabriz/105074_lesions.nii.gz"
    "tabriz-105755 tabriz train $DATA/tabriz/105755_flair.nii.gz $DATA/tabriz/105755_lesions.nii.gz"
    "tabriz-105911 tabriz val $DATA/tabriz/105911_flair.nii.gz $DATA/tabriz/105911_lesions.nii.gz"
)

if stage 1; then
    # The raw clinical scans (with skull, 6.4-8 mm slices) go through predict's own preprocessing (HD-BET v1,
    # N4, 1 mm RAS) without the intensity normalisation, so that synth can scale lesion contrasts; the MNI scans
    # of LIT and MSLesSeg are already skull-stripped and at 1 mm.
    stamp "1/5 real scans onto the working grid"
    for entry in "${scans[@]}"; do
        read -r name site role flair lesions <<< "$entry"
        out="$WORK/real/$name"
        [ -f "$out/flair.nii.gz" ] && continue
        if [ "$site" = tabriz ]; then
            $MSNEWLESION preprocess "$flair" "$flair" -o "$WORK/real-prep/$name" --space none \
                --normalization none --baseline-label "lesions=$lesions" --overwrite --quiet > /dev/null
            $PYTHON "$here/prepare_real.py" --image "$WORK/real-prep/$name/baseline.nii.gz" \
                --lesions "$WORK/real-prep/$name/lesions.nii.gz" --brain-mask "$WORK/real-prep/$name/brain_mask.nii.gz" \
                -o "$out"
        else
            $PYTHON "$here/prepare_real.py" --image "$flair" --lesions "$lesions" -o "$out"
        fi
    done
fi

library_train=() library_val=()
for mask in "$DATA"/lit/lesion_masks/patient*.nii.gz; do
    number=$(basename "$mask" .nii.gz); number=${number#patient}
    if (( 10#$number <= 16 )); then library_train+=(--library "$mask"); else library_val+=(--library "$mask"); fi
done
common=(--acquisition --max-rotation 2 --max-translation 1.5 --noise 0 --contrast 1.4 --contrast-spread 0.25 --quiet)
# null pairs as gentle as real rescans: a small repositioning, and acquisitions drawn from one protocol's range
gentle=(--acquisition --max-rotation 1 --max-translation 1 --noise 0 --slice-thickness 3 5 --quiet)

synth_scan() {  # name, role, seed: the synthetic pairs made from one real scan
    local name=$1 role=$2 seed=$3 dir="$WORK/real/$1" split=train library=() added=4 removed=4 pairs=8 grow=3 null=2
    [ "$role" = val ] && split=val && pairs=2 && grow=1 && null=1
    if [[ $name == tabriz-* ]]; then
        # a native-space scan: the library's MNI lesion shapes do not share its grid, so its new lesions are its
        # own real lesions, in-painted away at baseline (and no enlarging ones: synth grows library lesions)
        added=0; removed=5; grow=0
    elif [ "$role" = val ]; then library=("${library_val[@]}")
    else library=("${library_train[@]}")
    fi
    [ "$name" = mslesseg-p18 ] && removed=1 && grow=0  # three lesions in all
    local mode=both; (( added == 0 )) && mode=remove
    local flags=("${common[@]}" --split "$split")
    [ -f "$WORK/synth/$name-new/manifest.csv" ] || $MSNEWLESION synth "$dir/flair.nii.gz" "$dir/lesions.nii.gz" \
        "${library[@]}" -o "$WORK/synth/$name-new" --subject "$name-new" --pairs "$pairs" --seed "$seed" \
        --mode "$mode" --removed "$removed" --added "$added" "${flags[@]}" > /dev/null
    (( grow > 0 )) && { [ -f "$WORK/synth/$name-grow/manifest.csv" ] || $MSNEWLESION synth "$dir/flair.nii.gz" \
        "$dir/lesions.nii.gz" "${library[@]}" -o "$WORK/synth/$name-grow" --subject "$name-grow" --pairs "$grow" \
        --seed $(( seed + 100 )) --mode "$mode" --removed 1 --added $(( added > 0 ? 1 : 0 )) --enlarged 3 \
        "${flags[@]}" > /dev/null; }
    [ -f "$WORK/synth/$name-null/manifest.csv" ] || $MSNEWLESION synth "$dir/flair.nii.gz" "$dir/lesions.nii.gz" \
        -o "$WORK/synth/$name-null" --subject "$name-null" --pairs "$null" --seed $(( seed + 200 )) --mode none \
        "${gentle[@]}" --split "$split" > /dev/null
    return 0
}
export -f synth_scan
export WORK

if stage 2; then
    stamp "2/5 synthetic pairs from every real scan"
    seed=10000
    for entry in "${scans[@]}"; do
        read -r name site role flair lesions <<< "$entry"
        printf '%s\0%s\0%s\0' "$name" "$role" "$seed"
        seed=$(( seed + 1000 ))
    done | xargs -0 -n 3 -P "$JOBS" bash -c "$(declare -p common gentle library_train library_val); synth_scan \"\$0\" \"\$1\" \"\$2\""
fi

if stage 3; then
    # the new lesions that a pair's simulated acquisitions erased (no measurable brightening at the follow-up)
    # are dropped from its labels: they would teach the network to call lesions it cannot see
    stamp "3/5 labels of erased lesions dropped; preprocessing: 1 mm RAS, z-score in the brain, the three labels"
    $PYTHON "$here/drop_invisible.py" "$WORK"/synth/*/*-synth*/
    preprocess_one() {
        pair="$1"; out="$2"
        [ -f "$out/preprocess.json" ] && return 0
        $MSNEWLESION preprocess "$pair/baseline.nii.gz" "$pair/followup.nii.gz" -o "$out" --space none \
            --skull-strip none --no-bias-correction \
            --followup-label "new_lesions=$pair/new_lesions_visible.nii.gz" \
            --baseline-label "lesions_baseline=$pair/lesions_baseline.nii.gz" \
            --followup-label "lesions_followup=$pair/lesions_followup_visible.nii.gz" --overwrite --quiet > /dev/null
    }
    preprocess_single() {
        scan="$1"; out="$2"
        [ -f "$out/preprocess.json" ] && return 0
        $MSNEWLESION preprocess "$scan/flair.nii.gz" "$scan/flair.nii.gz" -o "$out" --space none --skull-strip none \
            --no-bias-correction --baseline-label "lesions=$scan/lesions.nii.gz" --overwrite --quiet > /dev/null
    }
    export -f preprocess_one preprocess_single
    for pair in "$WORK"/synth/*/*/; do
        [ -f "$pair/synth.json" ] && printf '%s\0%s\0' "${pair%/}" "$WORK/prep/$(basename "$pair")"
    done | xargs -0 -n 2 -P "$JOBS" bash -c 'preprocess_one "$0" "$1"'
    for scan in "$WORK"/real/*/; do
        printf '%s\0%s\0' "${scan%/}" "$WORK/prep/real-$(basename "$scan")"
    done | xargs -0 -n 2 -P "$JOBS" bash -c 'preprocess_single "$0" "$1"'
fi

manifest="$WORK/manifest.csv"
if stage 4; then
    stamp "4/5 training manifest"
    {
        echo "subject,kind,baseline,followup,label,brain_mask,split,baseline_lesions,followup_lesions"
        for entry in "${scans[@]}"; do
            read -r name site role flair lesions <<< "$entry"
            for prep in "$WORK"/prep/"$name"-*; do
                [ -d "$prep" ] || continue
                p="prep/$(basename "$prep")"
                echo "$(basename "$prep"),longitudinal,$p/baseline.nii.gz,$p/followup.nii.gz,$p/new_lesions.nii.gz,$p/brain_mask.nii.gz,$role,$p/lesions_baseline.nii.gz,$p/lesions_followup.nii.gz"
            done
            p="prep/real-$name"
            echo "real-$name,single,$p/baseline.nii.gz,,$p/lesions.nii.gz,$p/brain_mask.nii.gz,$role,,"
        done
    } > "$manifest"
    $MSNEWLESION train "$manifest" -o "$WORK/run" --config "$here/train.yaml" --dry-run --quiet
fi

if stage 5; then
    stamp "5/5 training, from $INIT_FROM"
    extra=()
    [ -n "${TIME_LIMIT:-}" ] && extra+=(--time-limit "$TIME_LIMIT")
    [ -n "${ITERATIONS:-}" ] && extra+=(--iterations "$ITERATIONS")
    if [ -f "$WORK/run/last/training_state.pt" ]; then extra+=(--resume); else extra+=(--overwrite --init-from "$INIT_FROM"); fi
    # shellcheck disable=SC2086
    $MSNEWLESION train "$manifest" -o "$WORK/run" --config "$here/train.yaml" --device "$DEVICE" "${extra[@]}" \
        $TRAIN_FLAGS --quiet
fi
stamp "done: model folders in $WORK/run/best and $WORK/run/last"
