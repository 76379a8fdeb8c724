#!/usr/bin/env bash
# tfuse-mpi on bad input: each case must exit non-zero with one "error:" line that
# contains the expected words, and must leave no output file behind (and an existing
# output untouched).
# usage: bad_jobs.sh TFUSE_MPI RANKS WORKDIR
set -uo pipefail
tfuse=$1 ranks=$2 work=$3
rm -rf "$work"
mkdir -p "$work/out"
passed=0 failed=0

fail() {
    echo "FAIL $1: $2"
    failed=$((failed + 1))
}

# expect NAME JOB_TEXT WORD... : runs the job and checks exit status, message and outputs.
expect() {
    local name=$1 text=$2
    shift 2
    printf '%s\n' "$text" > "$work/$name.json"
    local before
    before=$(cd "$work/out" && find . -type f | sort | xargs -r md5sum)
    mpirun -n "$ranks" "$tfuse" "$work/$name.json" > "$work/$name.out" 2> "$work/$name.err"
    local rc=$?
    local errors
    errors=$(grep -c '^error' "$work/$name.err")
    local ok=1
    if [[ $rc -eq 0 ]]; then fail "$name" "exit status 0"; ok=0; fi
    if [[ $errors -ne 1 ]]; then fail "$name" "expected one error line, got $errors"; ok=0; fi
    for word in "$@"; do
        if ! grep -q -- "$word" "$work/$name.err"; then
            fail "$name" "message lacks \"$word\": $(head -c 300 "$work/$name.err")"
            ok=0
        fi
    done
    local after
    after=$(cd "$work/out" && find . -type f | sort | xargs -r md5sum)
    if [[ "$before" != "$after" ]]; then fail "$name" "output directory changed"; ok=0; fi
    if [[ $ok -eq 1 ]]; then passed=$((passed + 1)); fi
}

out=$work/out
model='"model": {"d": 16, "layers": 1, "heads": 2, "mlp": 32}'
small='"data": {"train_limit": 600, "test_limit": 200}'

# A valid tiny parent and an existing output to protect.
printf '{"tasks": [{"task": "train", %s, %s, "steps": 2, "output": "%s/p.h5"}]}\n' \
    "$model" "$small" "$out" > "$work/make_parent.json"
mpirun -n "$ranks" "$tfuse" "$work/make_parent.json" > /dev/null 2>&1 || fail setup "training a tiny parent failed"
printf '{"tasks": [{"task": "train", "model": {"d": 16, "layers": 2, "heads": 2, "mlp": 32}, %s, "steps": 2, "output": "%s/deep.h5"}]}\n' \
    "$small" "$out" > "$work/make_deep.json"
mpirun -n "$ranks" "$tfuse" "$work/make_deep.json" > /dev/null 2>&1 || fail setup "training a deeper parent failed"
echo "not an HDF5 file" > "$out/text.h5"
touch "$work/a_file"

expect invalid_json '{"tasks": [' "invalid_json.json:1:12: invalid JSON near" "ends before"
expect unknown_key '{"tasks": [{"task": "train", '"$model"', "output": "'"$out"'/x.h5", "epohcs": 1}]}' \
    "tasks\[0\].epohcs" "did you mean"
expect wrong_type '{"tasks": [{"task": "train", "model": {"d": "wide"}, "output": "'"$out"'/x.h5"}]}' \
    "tasks\[0\].model.d" "integer" 'found "wide"'
expect missing_data '{"tasks": [{"task": "train", '"$model"', "data": {"train_images": "/nonexistent/images.gz"}, "steps": 1, "output": "'"$out"'/x.h5"}]}' \
    "/nonexistent/images.gz" "training images"
expect existing_output '{"tasks": [{"task": "train", '"$model"', '"$small"', "steps": 1, "output": "'"$out"'/p.h5"}]}' \
    "p.h5" "exists" '"overwrite": true' '"resume": true'
expect unwritable_output '{"tasks": [{"task": "train", '"$model"', '"$small"', "steps": 1, "output": "'"$work"'/a_file/x.h5"}]}' \
    "a_file" "directory"
expect missing_parent '{"tasks": [{"task": "fuse", "parents": ["'"$out"'/p.h5", "'"$out"'/none.h5"], '"$small"', "methods": [{"name": "v", "method": "vanilla"}]}]}' \
    "none.h5" "parents\[1\]"
expect missing_bert_parent '{"tasks": [{"task": "fuse", "parents": ["'"$out"'/none.h5", "'"$out"'/p.h5"], "data": {"corpus": "'"$work"'/kjv.tsv"}, "methods": [{"name": "v", "method": "vanilla"}]}]}' \
    "none.h5" "parents\[0\]" "not found"
expect parent_not_hdf5 '{"tasks": [{"task": "fuse", "parents": ["'"$out"'/p.h5", "'"$out"'/text.h5"], '"$small"', "methods": [{"name": "v", "method": "vanilla"}]}]}' \
    "text.h5"
expect incompatible_parents '{"tasks": [{"task": "fuse", "parents": ["'"$out"'/p.h5", "'"$out"'/deep.h5"], '"$small"', "methods": [{"name": "ot"}], "output_dir": "'"$out"'/fused"}]}' \
    "layers"
expect too_many_calibration '{"tasks": [{"task": "fuse", "parents": ["'"$out"'/p.h5", "'"$out"'/p.h5"], '"$small"', "calibration_samples": 5000, "methods": [{"name": "ot"}], "output_dir": "'"$out"'/fused"}]}' \
    "calibration_samples" "5000"
expect offset_past_end '{"tasks": [{"task": "train", '"$model"', "data": {"train_offset": 60000}, "steps": 1, "output": "'"$out"'/x.h5"}]}' \
    "train_offset = 60000" "train-images" "60000 images" "leaves none"
expect bad_labels '{"tasks": [{"task": "train", "model": {"d": 16, "layers": 1, "heads": 2, "mlp": 32, "classes": 5}, '"$small"', "steps": 1, "output": "'"$out"'/x.h5"}]}' \
    "label" "class"
expect weights_not_normalized '{"tasks": [{"task": "fuse", "parents": ["'"$out"'/p.h5", "'"$out"'/p.h5"], "weights": [0.7, 0.7], "methods": [{"name": "v"}]}]}' \
    "weights" "sum to 1"

# A missing job file and an unknown option.
mpirun -n "$ranks" "$tfuse" "$work/no_such_job.json" > /dev/null 2> "$work/nojob.err"
if [[ $? -ne 0 ]] && grep -q "no_such_job.json" "$work/nojob.err"; then
    passed=$((passed + 1))
else
    fail missing_job "no error naming the missing job file"
fi
mpirun -n "$ranks" "$tfuse" --frobnicate "$work/make_parent.json" > /dev/null 2> "$work/option.err"
if [[ $? -ne 0 ]] && grep -q -- "--frobnicate" "$work/option.err"; then
    passed=$((passed + 1))
else
    fail unknown_option "no error naming the unknown option"
fi

# --help names both architectures and the job file documentation.
mpirun -n 1 "$tfuse" --help > "$work/help.out" 2>&1
help_ok=1
for word in "ViT" "Fashion-MNIST" "BERT" "masked language modelling" "docs/JOBS.md"; do
    if ! grep -q -- "$word" "$work/help.out"; then fail help "lacks \"$word\""; help_ok=0; fi
done
if [[ $help_ok -eq 1 ]]; then passed=$((passed + 1)); fi

# A one-task job on one training and one test image: log lines use singular counts, and
# warnings about the job name the job file, not a C function.
one='"data": {"train_limit": 1, "test_limit": 1}, "optimizer": {"warmup_steps": 0}, "steps": 1, "batch_size": 1'
printf '{"tasks": [{"task": "train", %s, %s, "output": "%s/one.h5"}]}\n' "$model" "$one" "$out" \
    > "$work/one.json"
mpirun -n "$ranks" "$tfuse" "$work/one.json" > "$work/one.out" 2> "$work/one.err"
rc=$?
one_ok=1
check_one() { # check_one FILE PATTERN: PATTERN (grep -E) must occur in FILE
    if ! grep -qE -- "$2" "$1"; then fail singular_counts "no \"$2\" in $(head -c 600 "$1")"; one_ok=0; fi
}
if [[ $rc -ne 0 ]]; then fail singular_counts "exit status $rc: $(head -c 300 "$work/one.err")"; one_ok=0; fi
check_one "$work/one.out" "[0-9]+ parameters, 1 image, batch 1, 1 step \("
check_one "$work/one.out" "one.json: the task finished in"
if grep -qE "[^0-9]1 (images|steps|tasks|layers)" "$work/one.out"; then
    fail singular_counts "plural after 1: $(grep -E "[^0-9]1 (images|steps|tasks|layers)" "$work/one.out")"
    one_ok=0
fi
if [[ $ranks -gt 1 ]]; then
    check_one "$work/one.err" "^warning: $work/one.json: tasks\[0\]\.batch_size = 1 is smaller than the $ranks ranks"
    check_one "$work/one.err" "^warning: $work/one.json: tasks\[0\]: 1 test image for $ranks ranks"
    [[ $ranks -eq 2 ]] && check_one "$work/one.err" "so 1 rank stays idle in each step"
fi
if grep '^warning' "$work/one.err" | grep -qv "^warning: $work/one.json: "; then
    fail singular_counts "a warning does not start with the job file: $(grep '^warning' "$work/one.err")"
    one_ok=0
fi
if [[ $one_ok -eq 1 ]]; then passed=$((passed + 1)); fi

leftovers=$(find "$work" -name '*.tmp*' | wc -l)
if [[ $leftovers -ne 0 ]]; then fail temporaries "$leftovers temporary files left"; else passed=$((passed + 1)); fi

echo "bad_jobs: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
