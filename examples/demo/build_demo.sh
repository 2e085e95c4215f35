#!/usr/bin/env bash
# Rebuild the built-in example pair and the `demo` model from the LIT data, with msnewlesion's own
# commands: synth → preprocess → train → predict + evaluate on pairs from a scan it never saw.
#
#   examples/demo/build_demo.sh [WORK_DIR]
#
# Environment: DATA (the LIT folder; default tests/data/lit), JOBS (parallel jobs), DEVICE (auto, cpu,
# cuda), TRAIN_PAIRS, VAL_PAIRS, TEST_PAIRS, ITERATIONS (instead of train.yaml's), TIME_LIMIT (minutes
# of training) or DEADLINE (epoch seconds by which the run should end, keeping RESERVE seconds for the
# test; with SECONDS_PER_ITERATION the iterations are fitted to it), TRAIN_FLAGS (extra flags for
# `msnewlesion train`), FROM_STAGE / UNTIL_STAGE (run stages 1-6 in parts), REGISTRATION=none
# (pairs without motion and no registration, for a machine without antspyx). Everything is seeded; README.md beside this file gives the
# numbers and times of the run that made the shipped files.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
DATA="${DATA:-$root/tests/data/lit}"
WORK="${1:-work-demo}"
JOBS="${JOBS:-2}"
DEVICE="${DEVICE:-auto}"
TRAIN_PAIRS="${TRAIN_PAIRS:-32}"
VAL_PAIRS="${VAL_PAIRS:-3}"
TEST_PAIRS="${TEST_PAIRS:-8}"
TRAIN_FLAGS="${TRAIN_FLAGS:-}"
MSNEWLESION="${MSNEWLESION:-msnewlesion}"
# one ITK thread per registration: reproducible results, and the parallelism comes from JOBS
export ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1
export MSNEWLESION JOBS
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
started=$(date +%s)
stamp() { echo "[$(( $(date +%s) - started )) s] $*"; }
FROM_STAGE="${FROM_STAGE:-1}"
UNTIL_STAGE="${UNTIL_STAGE:-6}"
stage() { (( $1 >= FROM_STAGE && $1 <= UNTIL_STAGE )); }
# REGISTRATION=none: pairs without motion, preprocessed without registration (for machines without antspyx)
motion=() space=(--transform QuickRigid)
if [ "${REGISTRATION:-rigid}" = none ]; then
    motion=(--max-rotation 0 --max-translation 0) space=(--space none)
fi

# The lesion library is split by patient: training pairs get lesions of 14 patients, the held-out
# test pairs lesions of the 13 others, and the test pairs come from a scan (patient26) the model never sees.
train_library=() test_library=()
for mask in "$DATA"/lesion_masks/patient*.nii.gz; do
    number=$(basename "$mask" .nii.gz); number=${number#patient}
    if (( 10#$number <= 16 )); then train_library+=(--library "$mask"); else test_library+=(--library "$mask"); fi
done

train_scan="$DATA/cross_sectional/patient07"
test_scan="$DATA/cross_sectional/patient26"

if stage 1; then
stamp "1/6 synthetic pairs"
synth_pids=()
chunk=8
for (( first = 0; first < TRAIN_PAIRS; first += chunk )); do
    count=$(( TRAIN_PAIRS - first < chunk ? TRAIN_PAIRS - first : chunk ))
    $MSNEWLESION synth "$train_scan/flair.nii.gz" "$train_scan/lesions.nii.gz" "${train_library[@]}" \
        -o "$WORK/synth-train/chunk$first" --subject train --start "$first" --pairs "$count" --seed 1000 \
        --mode both --removed 4 --added 4 --contrast 1.35 --contrast-spread 0.15 "${motion[@]}" --quiet > /dev/null &
    synth_pids+=($!)
done
$MSNEWLESION synth "$train_scan/flair.nii.gz" "$train_scan/lesions.nii.gz" "${train_library[@]}" \
    -o "$WORK/synth-val" --subject val --split val --pairs "$VAL_PAIRS" --seed 5000 --mode both "${motion[@]}" \
    --quiet > /dev/null &
synth_pids+=($!)
$MSNEWLESION synth "$test_scan/flair.nii.gz" "$test_scan/lesions.nii.gz" "${test_library[@]}" \
    -o "$WORK/synth-test" --subject test --pairs "$TEST_PAIRS" --seed 9000 --mode both --quiet > /dev/null &
synth_pids+=($!)
for pid in "${synth_pids[@]}"; do wait "$pid"; done
fi

# Training pairs are registered with QuickRigid and without N4 (the LIT scans are already
# bias-corrected): about 10 s a pair instead of 40; the held-out test below uses predict's defaults.
if stage 2; then
stamp "2/6 preprocessing (QuickRigid into the halfway space, 1 mm, z-score) with labels carried"
preprocess_one() {
    pair="$1"; out="$2"
    [ -f "$out/preprocess.json" ] && return 0
    $MSNEWLESION preprocess "$pair/baseline.nii.gz" "$pair/followup.nii.gz" -o "$out" --skull-strip none \
        $space_flags --no-bias-correction --followup-label "$pair/new_lesions.nii.gz" --baseline-label "$pair/lesions_baseline.nii.gz" --quiet >/dev/null
}
export -f preprocess_one
export space_flags="${space[*]}"
{
    for pair in "$WORK"/synth-train/*/*/ "$WORK"/synth-val/*/; do
        printf '%s\0%s\0' "${pair%/}" "$WORK/prep/$(basename "$pair")"
    done
} | xargs -0 -n 2 -P "$JOBS" bash -c 'preprocess_one "$0" "$1"'
# the real scan itself, as a single-time-point sample with its real all-lesion mask
[ -f "$WORK/prep/patient07-real/preprocess.json" ] || $MSNEWLESION preprocess "$train_scan/flair.nii.gz" \
    "$train_scan/flair.nii.gz" -o "$WORK/prep/patient07-real" --skull-strip none --space none \
    --no-bias-correction \
    --baseline-label "$train_scan/lesions.nii.gz" --quiet >/dev/null
fi

if stage 3; then
stamp "3/6 training manifest"
manifest="$WORK/manifest.csv"
{
    echo "subject,kind,baseline,followup,label,brain_mask,split"
    for prep in "$WORK"/prep/train-* "$WORK"/prep/val-*; do
        name=$(basename "$prep"); split=train; [[ $name == val-* ]] && split=val
        echo "$name,longitudinal,prep/$name/baseline.nii.gz,prep/$name/followup.nii.gz,prep/$name/followup_label.nii.gz,prep/$name/brain_mask.nii.gz,$split"
        if [ "$split" = train ]; then
            echo "$name-baseline,single,prep/$name/baseline.nii.gz,,prep/$name/baseline_label.nii.gz,prep/$name/brain_mask.nii.gz,train"
        fi
    done
    echo "patient07-real,single,prep/patient07-real/baseline.nii.gz,,prep/patient07-real/baseline_label.nii.gz,prep/patient07-real/brain_mask.nii.gz,train"
} > "$manifest"
$MSNEWLESION train "$manifest" -o "$WORK/run" --dry-run --quiet
fi

manifest="$WORK/manifest.csv"
if stage 4; then
stamp "4/6 training"
time_limit=()
# DEADLINE (epoch seconds) leaves RESERVE seconds after training for the held-out test; with
# SECONDS_PER_ITERATION (measured beforehand) the number of iterations is fitted to the time left.
if [ -n "${DEADLINE:-}" ]; then
    TIME_LIMIT=$(python3 -c "import time; print(max(($DEADLINE - time.time() - ${RESERVE:-150}) / 60, 0.5))")
    if [ -n "${SECONDS_PER_ITERATION:-}" ]; then
        ITERATIONS=$(python3 -c "print(max(int($TIME_LIMIT * 60 * 0.85 / $SECONDS_PER_ITERATION), 10))")
    fi
fi
[ -n "${TIME_LIMIT:-}" ] && time_limit=(--time-limit "$TIME_LIMIT")
config="$here/train.yaml"
if [ -n "${ITERATIONS:-}" ]; then
    # the same settings for another length: the relation regulariser still joins halfway
    config="$WORK/train.yaml"
    python3 - "$here/train.yaml" "$config" "$ITERATIONS" <<'PY'
import sys, yaml
settings = yaml.safe_load(open(sys.argv[1]))
settings["iterations"] = int(sys.argv[3])
settings["relation_start"] = max(int(sys.argv[3]) // 2, 1)
yaml.safe_dump(settings, open(sys.argv[2], "w"), sort_keys=False)
PY
fi
stamp "training with $config ${ITERATIONS:+($ITERATIONS iterations)} ${TIME_LIMIT:+time limit $TIME_LIMIT min}"
# shellcheck disable=SC2086
$MSNEWLESION train "$manifest" -o "$WORK/run" --config "$config" --device "$DEVICE" --overwrite \
    "${time_limit[@]}" $TRAIN_FLAGS --quiet
fi
model="$WORK/run/best"
[ -d "$model" ] || model="$WORK/run/last"

if stage 5; then
stamp "5/6 held-out test: full predict (preprocessing included) on pairs from patient26"
predict_one() {
    pair="$1"; out="$2"; model="$3"; device="$4"
    $MSNEWLESION predict "$pair/baseline.nii.gz" "$pair/followup.nii.gz" -o "$out" --model "$model" \
        --skull-strip none --device "$device" --quiet --overwrite >/dev/null
}
export -f predict_one
{
    for pair in "$WORK"/synth-test/*/; do
        printf '%s\0%s\0%s\0%s\0' "${pair%/}" "$WORK/test/$(basename "$pair")" "$model" "$DEVICE"
    done
} | xargs -0 -n 4 -P "$JOBS" bash -c 'predict_one "$0" "$1" "$2" "$3"'
{
    echo "case,prediction,reference"
    for pair in "$WORK"/synth-test/*/; do
        name=$(basename "$pair")
        echo "$name,test/$name/new_lesions.nii.gz,synth-test/$name/new_lesions.nii.gz"
    done
} > "$WORK/test_pairs.csv"
$MSNEWLESION evaluate --pairs "$WORK/test_pairs.csv" -o "$WORK/test_results.csv" --overwrite --json \
    > "$WORK/test_results.json"
fi

if stage 6; then
stamp "6/6 done"
python3 - "$WORK" <<'PY'
import json, sys
results = json.load(open(f"{sys.argv[1]}/test_results.json"))
summary = results["summary"]["mean"]
print(f"held-out test pairs: lesion F1 {summary['lesion_f1']:.3f}, sensitivity {summary['lesion_sensitivity']:.3f}, "
      f"PPV {summary['lesion_ppv']:.3f}, Dice {summary['dice']:.3f}")
PY
fi
