#!/usr/bin/env bash
# Build the msnewlesion image with buildah and run it as a BIDS App on a tiny dataset (docs/containers.md).
#
# Run by hand, as root, on a Debian-like machine with buildah, debootstrap, python3 and unshare
# (apt-get install -y buildah debootstrap); it is not part of the test suite: it needs PyPI and takes
# tens of minutes on 2 cores. No container runtime and no base image from a registry are needed:
#
#   1. a Debian base (python3, venv) made with debootstrap from the mirror apt is configured with;
#   2. the image built from ./Dockerfile with `buildah bud --isolation chroot`, PyTorch from a local
#      CPU wheel (TORCH_WHEEL, default the cp311 CPU wheel under /opt/wheels);
#   3. in the image, as its non-root user and without network: --help, --version, `demo` (its F1),
#      `bids /data /out participant --participant-label 01` on the built-in example pair laid out as a
#      BIDS dataset mounted read-only at /data, the `group` level, `evaluate` of the BIDS new-lesion mask;
#      the outputs are checked and /data must be unwritable and unchanged (sha256 of every file).
#
# Usage: container/test.sh          build (reusing the base and the cached build layers) and test
#        REBUILD=1 container/test.sh  build everything from scratch, the base included
#        container/test.sh clean    remove the work folder and its image store
# Settings (environment): WORK (default /var/tmp/msnewlesion-container, holds its own image store),
# SUITE (bookworm), MIRROR (default: apt's Debian mirror), TORCH_WHEEL, PIP_CERT (a CA bundle for pip).
set -euo pipefail

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${WORK:-/var/tmp/msnewlesion-container}
SUITE=${SUITE:-bookworm}
CA_BUNDLE=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$REPO/src/msnewlesion/__init__.py")
IMAGE=localhost/msnewlesion:$VERSION
BASE_IMAGE=localhost/msnewlesion-base:$SUITE
TEST_UID=4242  # an arbitrary user, as `docker run --user` or Apptainer gives one

# A store of its own: nothing of the host's images is touched, and `clean` removes everything.
store() { buildah --root "$WORK/storage" --runroot "$WORK/runroot" "$@"; }
step() { printf '\n=== %s\n' "$*"; }
fail() {
    echo "container/test.sh: FAILED: $*" >&2
    exit 1
}
json_get() {  # json_get FILE KEY: the first value of KEY anywhere in the JSON document
    python3 - "$1" "$2" <<'EOF'
import json, sys
def find(node, key):
    if isinstance(node, dict):
        if key in node:
            return node[key]
        node = list(node.values())
    if isinstance(node, list):
        for item in node:
            found = find(item, key)
            if found is not None:
                return found
    return None
value = find(json.load(open(sys.argv[1])), sys.argv[2])
if value is None:
    sys.exit(f"{sys.argv[2]} not found in {sys.argv[1]}")
print(json.dumps(value) if isinstance(value, (dict, list)) else value)
EOF
}

if [[ ${1:-} == clean ]]; then
    if [[ -d $WORK/storage ]]; then
        store rm --all >/dev/null || true
        store rmi --all --force >/dev/null || true
    fi
    rm -rf -- "$WORK"
    echo "removed $WORK"
    exit 0
fi

[[ $EUID -eq 0 ]] || fail "run as root: debootstrap and buildah's chroot isolation need it"
for tool in buildah debootstrap python3 unshare sha256sum; do
    command -v "$tool" >/dev/null || fail "$tool not found (apt-get install -y buildah debootstrap)"
done
if [[ -z ${TORCH_WHEEL:-} ]]; then
    TORCH_WHEEL=$(find /opt/wheels -maxdepth 1 -name 'torch-*+cpu-cp311-*.whl' 2>/dev/null | sort -V | tail -n 1)
fi
[[ -f $TORCH_WHEEL ]] || fail "no CPU torch wheel for Python 3.11: set TORCH_WHEEL=/path/to/torch-*.whl"
[[ -f $CA_BUNDLE ]] || fail "no CA bundle at $CA_BUNDLE: set PIP_CERT"
if [[ -z ${MIRROR:-} ]]; then
    # The first Debian mirror of apt's sources (deb822 "URIs:" or one-line "deb [options] URI"), not security.
    MIRROR=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null |
        sed -nE 's/^URIs:[[:space:]]*//p; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//p' |
        awk '{print $1}' | grep -v -- '-security' | grep -m 1 debian || true)
    MIRROR=${MIRROR:-http://deb.debian.org/debian}
fi
mkdir -p "$WORK"
if [[ ${REBUILD:-0} == 1 ]]; then
    store rm --all >/dev/null 2>&1 || true
    store rmi --all --force >/dev/null 2>&1 || true
fi

# --- 1. the base: Debian with Python 3 and venv -------------------------------------------------------
base_note="reused (made by an earlier run)"
if ! store inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
    step "base image $BASE_IMAGE: debootstrap $SUITE from $MIRROR"
    start=$SECONDS
    rm -rf -- "$WORK/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$WORK/rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
        fail "debootstrap (see $WORK/debootstrap.log)"
    rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb "$WORK"/rootfs/var/lib/apt/lists/*
    container=$(store from scratch)
    mountpoint=$(store mount "$container")
    cp -a "$WORK/rootfs/." "$mountpoint/"
    store umount "$container" >/dev/null
    store config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env LANG=C.UTF-8 --cmd /usr/bin/python3 "$container"
    store commit --rm --quiet "$container" "$BASE_IMAGE" >/dev/null
    rm -rf -- "$WORK/rootfs"
    base_note="$((SECONDS - start)) s (debootstrap and import)"
    echo "base made in $base_note"
fi

# --- 2. the image ----------------------------------------------------------------------------------------
step "image $IMAGE from $REPO/Dockerfile (torch: $(basename "$TORCH_WHEEL"))"
start=$SECONDS
store bud --isolation chroot --layers --pull=never \
    --build-arg BASE="$BASE_IMAGE" \
    --build-arg TORCH="/wheels/$(basename "$TORCH_WHEEL")" \
    --build-arg TORCH_INDEX_URL=https://pypi.org/simple \
    --build-arg PIP_CA_BUNDLE=/run/host-ca-bundle.crt \
    --build-arg VERSION="$VERSION" \
    --label org.opencontainers.image.revision="$(git -C "$REPO" rev-parse HEAD 2>/dev/null || true)" \
    --label org.opencontainers.image.created="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --volume "$(dirname "$TORCH_WHEEL"):/wheels:ro" \
    --volume "$CA_BUNDLE:/run/host-ca-bundle.crt:ro" \
    --file "$REPO/Dockerfile" --tag "$IMAGE" "$REPO" >"$WORK/build.log" 2>&1 ||
    { tail -n 30 "$WORK/build.log" >&2; fail "buildah bud (whole log: $WORK/build.log)"; }
build_s=$((SECONDS - start))
size=$(store images --format '{{.Size}}' "$IMAGE")
echo "built in ${build_s} s; image size $size (uncompressed)"

step "image configuration"
store inspect --type image "$IMAGE" |
    python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin)["OCIv1"]["config"]))' >"$WORK/config.json"
entrypoint=$(json_get "$WORK/config.json" Entrypoint)
image_user=$(json_get "$WORK/config.json" User)
labels=$(json_get "$WORK/config.json" Labels)
echo "ENTRYPOINT $entrypoint, USER $image_user"
echo "labels $labels"
[[ $entrypoint == '["msnewlesion"]' ]] || fail "ENTRYPOINT is $entrypoint, not [\"msnewlesion\"]"
[[ $image_user == msnewlesion ]] || fail "USER is $image_user, not msnewlesion"
python3 - "$labels" "$VERSION" <<'EOF' || fail "OCI labels"
import json, sys
labels, version = json.loads(sys.argv[1]), sys.argv[2]
assert labels["org.opencontainers.image.version"] == version, labels
assert labels["org.opencontainers.image.licenses"] == "MIT", labels
assert labels["org.opencontainers.image.title"] == "msnewlesion", labels
EOF

# --- 3. the image at work -------------------------------------------------------------------------------
# A tiny BIDS dataset: the built-in example pair as sub-01's two sessions.
example=$REPO/src/msnewlesion/data/example
rm -rf -- "$WORK/data" "$WORK/out" "$WORK/truth"
mkdir -p "$WORK/data/sub-01/ses-01/anat" "$WORK/data/sub-01/ses-02/anat" "$WORK/out/demo" "$WORK/truth"
cp "$example/baseline.nii.gz" "$WORK/data/sub-01/ses-01/anat/sub-01_ses-01_FLAIR.nii.gz"
cp "$example/followup.nii.gz" "$WORK/data/sub-01/ses-02/anat/sub-01_ses-02_FLAIR.nii.gz"
cp "$example/new_lesions.nii.gz" "$WORK/truth/"
cat >"$WORK/data/dataset_description.json" <<'EOF'
{"Name": "msnewlesion container test: the built-in example pair", "BIDSVersion": "1.9.0", "DatasetType": "raw"}
EOF
printf 'participant_id\nsub-01\n' >"$WORK/data/participants.tsv"
checksums() { (cd "$WORK/data" && find . -print | sort && find . -type f -print0 | sort -z | xargs -0 sha256sum); }
checksums >"$WORK/data.before"
chmod -R a-w "$WORK/data"  # read-only twice: the files here, and the mount below

container=$(store from --pull=never "$IMAGE")
trap 'store rm "$container" >/dev/null 2>&1 || true' EXIT
root=$(store mount "$container")
site_packages=$(echo "$root"/opt/msnewlesion/lib/python3*/site-packages)
largest=$(cd "$site_packages" && du -sm -- */ | sort -rn | head -n 6 | awk '{printf "%s%s %s MB", sep, $2, $1; sep=", "}')
venv_mb=$(du -sm "$root/opt/msnewlesion" | cut -f1)
echo "what takes the space: /opt/msnewlesion $venv_mb MB (largest: $largest)," \
    "the rest $(($(du -sm "$root" | cut -f1) - venv_mb)) MB"
store umount "$container" >/dev/null
mounts=(--volume "$WORK/data:/data:ro" --volume "$WORK/out:/out" --volume "$WORK/truth:/truth:ro")
# `unshare --net`: a network namespace with no interface, so any download attempt would fail.
in_image() { unshare --net buildah --root "$WORK/storage" --runroot "$WORK/runroot" run --isolation chroot "$@"; }
msnewlesion() { in_image "${mounts[@]}" "$container" -- msnewlesion "$@"; }

step "user and network inside"
uid=$(in_image "$container" -- id -u)
echo "runs as $(in_image "$container" -- id -un) (uid $uid)"
[[ $uid != 0 ]] || fail "the image runs as root"
if in_image "$container" -- python3 -c "import socket; socket.create_connection(('pypi.org', 443), 5)" 2>/dev/null; then
    fail "the network is reachable inside: the offline check means nothing"
fi
echo "no network inside (pypi.org unreachable)"
chown "$uid" "$WORK/out"
chmod a+rwx "$WORK/out/demo"

step "--help, --version"
msnewlesion --help >"$WORK/help.txt"
grep -q "bids" "$WORK/help.txt" || fail "--help does not list bids"
msnewlesion bids --help >"$WORK/bids_help.txt"
grep -q "participant" "$WORK/bids_help.txt" && grep -q "group" "$WORK/bids_help.txt" ||
    fail "bids --help does not name the participant and group levels"
version_line=$(msnewlesion --version)
echo "$version_line"
[[ $version_line == "msnewlesion $VERSION" ]] || fail "--version says '$version_line'"

step "demo, as the arbitrary user $TEST_UID:$TEST_UID (a HOME it cannot write)"
start=$SECONDS
in_image --user "$TEST_UID:$TEST_UID" "${mounts[@]}" "$container" -- \
    msnewlesion demo -o /out/demo/run --json --quiet >"$WORK/demo.json" 2>"$WORK/demo.err" ||
    { cat "$WORK/demo.err" >&2; fail "demo"; }
demo_s=$((SECONDS - start))
cat "$WORK/demo.err"
demo_f1=$(json_get "$WORK/demo.json" lesion_f1)
demo_dice=$(printf '%.2f' "$(json_get "$WORK/demo.json" dice)")
echo "demo: lesion-wise F1 $demo_f1, Dice $demo_dice, ${demo_s} s"
python3 -c "import sys; sys.exit(float('$demo_f1') < 0.99)" || fail "demo F1 $demo_f1 below the documented 1.00"
demo_f1=$(printf '%.2f' "$demo_f1")
[[ -f $WORK/out/demo/run/summary.json && -f $WORK/out/demo/run/new_lesions.nii.gz ]] || fail "demo outputs"

step "/data is read-only inside"
if in_image "${mounts[@]}" "$container" -- sh -c 'echo x > /data/probe' 2>/dev/null; then
    fail "/data could be written to"
fi
echo "writing to /data fails, as it must"

step "bids /data /out/bids participant --participant-label 01"
start=$SECONDS
msnewlesion bids /data /out/bids participant --participant-label 01 --quiet 2>&1 | tee "$WORK/participant.log" ||
    fail "participant level"
participant_s=$((SECONDS - start))
anat=$WORK/out/bids/sub-01/ses-02/anat
for file in "$anat/sub-01_ses-02_space-orig_label-newlesion_desc-since01_mask.nii.gz" \
    "$anat/sub-01_ses-02_space-orig_label-lesion_desc-since01_mask.nii.gz" \
    "$WORK/out/bids/sub-01/ses-01/anat/sub-01_ses-01_space-orig_label-lesion_desc-before02_mask.nii.gz" \
    "$anat/sub-01_ses-02_desc-since01_newlesions.tsv" \
    "$anat/sub-01_ses-02_desc-since01_summary.json" \
    "$WORK/out/bids/sub-01/figures/sub-01_ses-02_desc-since01_qc.png" \
    "$WORK/out/bids/dataset_description.json"; do
    [[ -s $file ]] || fail "missing participant output ${file#"$WORK/out/"}"
done
summary=$anat/sub-01_ses-02_desc-since01_summary.json
new_count=$(python3 -c "import json; print(json.load(open('$summary'))['new_lesions']['count'])")
new_volume=$(python3 -c "import json; print(round(json.load(open('$summary'))['new_lesions']['volume_mm3']))")
skull_strip=$(python3 - "$summary" <<'EOF'
import json, sys
steps = json.load(open(sys.argv[1]))["preprocessing"]["steps"]
step = next(step for step in steps if step["step"] == "skull_strip")
print(f"{step['method']} ({step.get('package', 'no package')}), {step.get('seconds', '?')} s")
EOF
)
echo "participant level: ${participant_s} s; ses-01 -> ses-02: $new_count new lesions, $new_volume mm³"

step "evaluate the BIDS new-lesion mask against the example's known new lesions"
msnewlesion evaluate /out/bids/sub-01/ses-02/anat/sub-01_ses-02_space-orig_label-newlesion_desc-since01_mask.nii.gz \
    /truth/new_lesions.nii.gz --json >"$WORK/bids_eval.json" 2>/dev/null || fail "evaluate"
bids_f1=$(printf '%.2f' "$(json_get "$WORK/bids_eval.json" lesion_f1)")
bids_dice=$(printf '%.2f' "$(json_get "$WORK/bids_eval.json" dice)")
echo "BIDS new-lesion mask: lesion-wise F1 $bids_f1, Dice $bids_dice"

step "bids /data /out/bids group --participant_label 01"
start=$SECONDS
# The BIDS-Apps spelling of the label option, as other BIDS Apps' users will type it.
msnewlesion bids /data /out/bids group --participant_label 01 --quiet 2>&1 | tee "$WORK/group.log" ||
    fail "group level"
group_s=$((SECONDS - start))
for file in group_newlesions.tsv group_newlesions.png group_newlesions.html; do
    [[ -s $WORK/out/bids/$file ]] || fail "missing group output $file"
done
echo "group_newlesions.tsv:"
column -t -s $'\t' "$WORK/out/bids/group_newlesions.tsv" 2>/dev/null || cat "$WORK/out/bids/group_newlesions.tsv"
python3 - "$WORK/out/bids/group_newlesions.tsv" "$new_count" <<'EOF' || fail "group table"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
assert len(rows) == 1, rows
assert rows[0]["status"] == "done", rows[0]
assert int(rows[0]["new_lesion_count"]) == int(sys.argv[2]), rows[0]
EOF

step "stderr of every run: no complaint about the environment"
# What a user of the image should never see: a folder it cannot write, a download attempt.
if grep -i -E "not a writable directory|temporary cache directory|connection|resolve host|urlopen" \
    "$WORK/demo.err" "$WORK/participant.log" "$WORK/group.log"; then
    fail "the runs above complained about their environment"
fi
echo "none"

step "/data unchanged"
checksums >"$WORK/data.after"
cmp -s "$WORK/data.before" "$WORK/data.after" || fail "/data changed: diff $WORK/data.before $WORK/data.after"
echo "the listing of /data and the sha256 of its $(find "$WORK/data" -type f | wc -l) files are the same as before"

cat <<EOF | tee "$WORK/report.txt"

=== container/test.sh passed ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPU cores)
image            $IMAGE, base $BASE_IMAGE, $(basename "$TORCH_WHEEL")
base             $base_note
build            ${build_s} s
image size       $size uncompressed; the virtual environment $venv_mb MB, largest: $largest
user             $image_user (uid $uid); demo also as uid $TEST_UID; no network inside
demo             $(json_get "$WORK/demo.json" n_pred_lesions) new lesions, lesion-wise F1 $demo_f1 and Dice $demo_dice against the example's $(json_get "$WORK/demo.json" n_ref_lesions) known ones, ${demo_s} s
bids participant ${participant_s} s: $new_count new lesions ($new_volume mm³), lesion-wise F1 $bids_f1 and Dice $bids_dice against the known ones
                 skull stripping: $skull_strip
bids group       ${group_s} s: group_newlesions.tsv, .png, .html
/data            read-only mount, unwritable, unchanged (sha256 of every file)
EOF
