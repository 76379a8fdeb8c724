#!/usr/bin/env bash
# The bad-input suite of tfuse-mpi: malformed job files, data files and model files,
# incompatible parents, unwritable or existing outputs, and a run killed mid-training.
# Each failing case must exit non-zero with exactly one "error" line that contains the
# expected words, and must leave the output directory as it was (no new, changed or
# temporary files).
#
# usage: run.sh TFUSE_MPI RANKS WORKDIR [all|subset]
#   RANKS 1 runs tfuse-mpi directly (MPI singleton), which saves mpirun's start-up time;
#   other counts use mpirun. "subset" runs only the cases marked for several ranks.
set -uo pipefail
tfuse=$1 ranks=$2 work=$3 which=${4:-all}
here=$(cd "$(dirname "$0")" && pwd)
python=${TFUSE_PYTHON:-/usr/bin/python3}
mpiexec=${TFUSE_MPIEXEC:-mpirun}
fashion=${TFUSE_FASHION_DIR:-/usr/share/datasets/fashion-mnist}
D=$work/data M=$work/models O=$work/out J=$work/jobs L=$work/logs
rm -rf "$work"
mkdir -p "$D" "$M" "$O" "$J" "$L"
passed=0 failed=0 skipped=0
started=$(date +%s)

# fail NAME REASON: reports one failed check; a case counts as failed once.
fail() {
    echo "FAIL $1: $2"
    if [[ $1 != "${last_failed:-}" ]]; then failed=$((failed + 1)); fi
    last_failed=$1
}

launch() {
    if [[ $ranks -eq 1 ]]; then
        "$tfuse" "$@"
    else
        "$mpiexec" -n "$ranks" "$tfuse" "$@"
    fi
}

# Cases that also run at several ranks: runtime failures that every rank reaches, and a
# sample of the checks done before any compute.
multi_rank_cases=" invalid_json missing_data existing_output unwritable_output missing_parent
    incompatible_layers too_many_calibration model_nan_weight model_inf_weight
    data_truncated_gzip model_wrong_shape sigterm_mid_training validate_clean
    hdf5_crash_parent hdf5_crash_first_parent hdf5_hang probe_quiet "

selected() {
    [[ $which == all || " $(echo $multi_rank_cases) " == *" $1 "* ]]
}

# write_job NAME TEXT: writes jobs/NAME.json with @D@, @M@, @O@ and @W@ replaced by the
# data, model, output and work directories.
write_job() {
    printf '%s\n' "$2" | sed -e "s|@D@|$D|g" -e "s|@M@|$M|g" -e "s|@O@|$O|g" -e "s|@W@|$work|g" \
        > "$J/$1.json"
}

# Lists every file under out/ with its checksum, then every directory: a run that fails
# after validation removes the output directories it created and left empty.
snapshot() {
    (cd "$O" && find . -type f -print0 | sort -z | xargs -0 -r md5sum && find . -type d | sort)
}

# check_failure NAME RC WORD...: checks the exit status, the message and the outputs of a
# run whose stderr is in logs/NAME.err and whose snapshot before the run is in $before.
check_failure() {
    local name=$1 rc=$2
    shift 2
    local ok=1 errors
    errors=$(grep -c '^error' "$L/$name.err")
    if [[ $rc -eq 0 ]]; then fail "$name" "exit status 0"; ok=0; fi
    if [[ $errors -ne 1 ]]; then
        fail "$name" "expected one error line, got $errors: $(grep '^error' "$L/$name.err" | head -c 400)"
        ok=0
    fi
    for word in "$@"; do
        if ! grep '^error' "$L/$name.err" | grep -q -- "$word"; then
            fail "$name" "message lacks \"$word\": $(grep '^error' "$L/$name.err" | head -c 400)"
            ok=0
        fi
    done
    if [[ "$before" != "$(snapshot)" ]]; then fail "$name" "the output directory changed"; ok=0; fi
    if [[ $ok -eq 1 ]]; then passed=$((passed + 1)); fi
}

# expect NAME [--validate] TEXT WORD...: runs job TEXT, which must fail as check_failure
# describes.
expect() {
    local name=$1 option=
    shift
    if [[ $1 == --validate ]]; then option=--validate; shift; fi
    local text=$1
    shift
    if ! selected "$name"; then skipped=$((skipped + 1)); return; fi
    write_job "$name" "$text"
    before=$(snapshot)
    launch $option "$J/$name.json" > "$L/$name.out" 2> "$L/$name.err"
    check_failure "$name" $? "$@"
}

# ---- Setup: small data, four tiny parents, malformed model files ---------------------
"$python" "$here/make_inputs.py" data "$D" "$fashion" || { echo "FAIL setup: writing data"; exit 1; }
data='"data": {"train_images": "@D@/train-images.gz", "train_labels": "@D@/train-labels.gz",
               "test_images": "@D@/test-images", "test_labels": "@D@/test-labels"}'
tiny='"d": 16, "layers": 1, "heads": 2, "mlp": 32'
write_job parents '{"tasks": [
  {"task": "train", "model": {'"$tiny"'}, '"$data"', "steps": 2, "batch_size": 32, "seed": 1, "output": "@O@/p.h5"},
  {"task": "train", "model": {'"$tiny"'}, '"$data"', "steps": 2, "batch_size": 32, "seed": 2, "output": "@O@/q.h5"},
  {"task": "train", "model": {"d": 16, "layers": 2, "heads": 2, "mlp": 32}, '"$data"', "steps": 2, "batch_size": 32, "output": "@O@/deep.h5"},
  {"task": "train", "model": {"d": 24, "layers": 1, "heads": 2, "mlp": 48}, '"$data"', "steps": 2, "batch_size": 32, "output": "@O@/wide.h5"}]}'
launch "$J/parents.json" > "$L/parents.out" 2>&1 || { echo "FAIL setup: training the parents"; cat "$L/parents.out"; exit 1; }
"$python" "$here/make_inputs.py" models "$M" "$O/p.h5" || { echo "FAIL setup: writing models"; exit 1; }
echo "not an HDF5 file" > "$M/text.h5"
mkdir -p "$M/a_directory.h5" "$O/dir_output.h5"
touch "$work/a_file"
echo "bad_inputs: setup took $(($(date +%s) - started)) s"

train_defaults='"steps": 1, "batch_size": 32'
fuse_defaults='"methods": [{"name": "ot"}]'
train() { # train OUTPUT [KEYS]: a train task; KEYS replace the defaults of steps and batch_size
    printf '{"task": "train", "model": {%s}, %s, "output": "%s", %s}' \
        "$tiny" "$data" "$1" "${2:-$train_defaults}"
}
fuse() { # fuse PARENT_A PARENT_B [KEYS]: a fuse task; KEYS replace the default methods
    printf '{"task": "fuse", "parents": ["%s", "%s"], %s, "output_dir": "@O@/fused", %s}' \
        "$1" "$2" "$data" "${3:-$fuse_defaults}"
}
data_with() { # data_with TRAIN_IMAGES TRAIN_LABELS TEST_IMAGES TEST_LABELS
    printf '"data": {"train_images": "%s", "train_labels": "%s", "test_images": "%s", "test_labels": "%s"}' "$@"
}
train_data() { # train_data DATA_JSON [MODEL_JSON]: a train task on other data files
    printf '{"tasks": [{"task": "train", "model": {%s}, %s, "steps": 1, "batch_size": 32, "output": "@O@/x.h5"}]}' \
        "${2:-$tiny}" "$1"
}
G="@D@/train-images.gz" GL="@D@/train-labels.gz" T="@D@/test-images" TL="@D@/test-labels"

# ---- Job files -------------------------------------------------------------------------
expect invalid_json '{"tasks": [' "invalid_json.json:1:12: invalid JSON near" "ends before the JSON is complete"
expect json_missing_comma $'{"tasks": [\n  {"task": "train", "steps": 10 "output": "x.h5"}]}' \
    "json_missing_comma.json:2:33: invalid JSON near" '"steps": 10 "output"'
expect empty_job '' "invalid JSON"
expect job_not_object '[1, 2]' "job must be a JSON object"
expect no_tasks '{"description": "nothing"}' "job.tasks"
expect empty_tasks '{"tasks": []}' "non-empty"
expect unknown_task '{"tasks": [{"task": "evaluate"}]}' 'tasks\[0\].task' "evaluate" "train, fuse"
expect unknown_key '{"tasks": ['"$(train @O@/x.h5 '"steps": 1, "epohcs": 1')"']}' 'tasks\[0\].epohcs' "did you mean"
expect duplicate_key '{"tasks": ['"$(train @O@/x.h5 '"steps": 1, "steps": 2')"']}' 'tasks\[0\].steps' "appears twice"
expect wrong_type '{"tasks": [{"task": "train", "model": {"d": "wide"}, "output": "@O@/x.h5"}]}' \
    'tasks\[0\].model.d' "integer" 'found "wide"'
expect string_for_integer '{"tasks": ['"$(fuse @O@/p.h5 @O@/q.h5 '"methods": [{"name": "ot"}], "calibration_samples": "400"')"']}' \
    'tasks\[0\].calibration_samples must be an integer; found "400"'
expect string_for_bool '{"tasks": ['"$(train @O@/x.h5 '"steps": 1, "overwrite": "yes"')"']}' \
    'tasks\[0\].overwrite must be true or false; found "yes"'
expect string_for_weight '{"tasks": [{"task": "fuse", "parents": ["@O@/p.h5", "@O@/q.h5"], "weights": [0.3, "0.7"], "methods": [{"name": "v"}]}]}' \
    'tasks\[0\].weights\[1\] must be a number >= 0; found "0.7"'
expect fractional_steps '{"tasks": ['"$(train @O@/x.h5 '"steps": 2.5')"']}' "steps" "integer"
expect negative_batch '{"tasks": ['"$(train @O@/x.h5 '"batch_size": -4')"']}' "batch_size" "out of range"
expect patch_not_divisor '{"tasks": [{"task": "train", "model": {"patch": 5}, "output": "@O@/x.h5"}]}' \
    "image_size = 28" "multiple of patch = 5"
expect width_not_multiple_of_heads '{"tasks": [{"task": "train", "model": {"d": 18, "heads": 4}, "output": "@O@/x.h5"}]}' \
    "d = 18" "multiple of heads = 4"
expect missing_output '{"tasks": [{"task": "train", "model": {'"$tiny"'}}]}' "missing required key" "output"
expect bad_method_name '{"tasks": ['"$(fuse @O@/p.h5 @O@/q.h5 '"methods": [{"name": "a/b"}]')"']}' \
    "may contain only" "a/b"
expect duplicate_method_name '{"tasks": [{"task": "fuse", "parents": ["@O@/p.h5", "@O@/q.h5"], "methods": [{"name": "m"}, {"name": "m", "solver": "sinkhorn"}]}]}' \
    "used twice"
expect weights_not_normalized '{"tasks": [{"task": "fuse", "parents": ["@O@/p.h5", "@O@/q.h5"], "weights": [0.7, 0.7], "methods": [{"name": "v"}]}]}' \
    "weights" "sum to 1"
expect weights_wrong_length '{"tasks": [{"task": "fuse", "parents": ["@O@/p.h5", "@O@/q.h5"], "weights": [1.0], "methods": [{"name": "v"}]}]}' \
    "weights" "one per"
expect anchor_out_of_range '{"tasks": [{"task": "fuse", "parents": ["@O@/p.h5", "@O@/q.h5"], "anchor": 2, "methods": [{"name": "v"}]}]}' \
    "anchor" "out of range"
expect one_parent '{"tasks": [{"task": "fuse", "parents": ["@O@/p.h5"], "methods": [{"name": "v"}]}]}' \
    "parents" "between 2 and"
expect weight_cost_joint '{"tasks": [{"task": "fuse", "parents": ["@O@/p.h5", "@O@/q.h5"], "methods": [{"name": "w", "cost": "weight", "residual": "joint"}]}]}' \
    "residual" "mean, skip or branch"
expect unknown_solver '{"tasks": [{"task": "fuse", "parents": ["@O@/p.h5", "@O@/q.h5"], "methods": [{"name": "s", "solver": "simplex"}]}]}' \
    "solver" "simplex" "exact, sinkhorn"
expect zero_epsilon '{"tasks": [{"task": "fuse", "parents": ["@O@/p.h5", "@O@/q.h5"], "methods": [{"name": "s", "solver": "sinkhorn", "epsilon": 0}]}]}' \
    "epsilon" "out of range"

if selected missing_job_file; then
    before=$(snapshot)
    launch "$J/no_such_job.json" > /dev/null 2> "$L/missing_job_file.err"
    check_failure missing_job_file $? "no_such_job.json"
fi
if selected unknown_option; then
    before=$(snapshot)
    launch --frobnicate "$J/parents.json" > /dev/null 2> "$L/unknown_option.err"
    check_failure unknown_option $? "--frobnicate"
fi

# ---- Data files ------------------------------------------------------------------------
expect missing_data "$(train_data "$(data_with /nonexistent/images.gz "$GL" "$T" "$TL")")" \
    "/nonexistent/images.gz" "training images" "cannot be opened"
expect data_is_directory "$(train_data "$(data_with "$G" "$GL" "@D@" "$TL")")" "test images" "is a directory"
expect data_empty "$(train_data "$(data_with "$G" "$GL" "@D@/empty" "$TL")")" "empty"
expect data_labels_as_images "$(train_data "$(data_with "$G" "$GL" "$TL" "$TL")")" \
    "magic number 0x00000801" "looks like a label file"
expect data_images_as_labels "$(train_data "$(data_with "$G" "$GL" "$T" "$T")")" \
    "magic number 0x00000803" "looks like an image file"
expect data_wrong_magic "$(train_data "$(data_with "$G" "$GL" "@D@/wrong-magic" "$TL")")" "magic number 0x00000c03" "expected 0x00000803"
expect data_short_header "$(train_data "$(data_with "$G" "$GL" "@D@/short-header" "$TL")")" "truncated" "header"
expect data_truncated_pixels "$(train_data "$(data_with "$G" "$GL" "@D@/truncated-pixels" "$TL")")" \
    "truncated-pixels" "truncated" "156800"
expect data_truncated_gzip "$(train_data "$(data_with "$G" "$GL" "@D@/truncated-pixels.gz" "$TL")")" \
    "truncated-pixels.gz" "truncated"
expect data_cut_gzip_stream "$(train_data "$(data_with "$G" "$GL" "@D@/cut-gzip.gz" "$TL")")" "cut-gzip.gz"
expect data_extra_bytes "$(train_data "$(data_with "$G" "$GL" "@D@/extra-bytes" "$TL")")" \
    "extra-bytes" "does not match"
expect data_zero_count "$(train_data "$(data_with "$G" "$GL" "@D@/zero-count" "$TL")")" "no images"
expect data_huge_side "$(train_data "$(data_with "$G" "$GL" "@D@/huge-side" "$TL")")" "70000 x 28"
expect data_count_mismatch "$(train_data "$(data_with "$G" "$GL" "$T" "@D@/labels-199")")" \
    "200 images" "199" "same count"
expect data_image_size "$(train_data "$(data_with "$G" "$GL" "@D@/images-14x14" "$TL")")" \
    "14 x 14" "28 x 28"
expect data_label_too_big "$(train_data "$(data_with "$G" "$GL" "$T" "@D@/labels-big")")" \
    "label 42" "10 classes"
expect data_labels_vs_classes "$(train_data "$data" '"d": 16, "layers": 1, "heads": 2, "mlp": 32, "classes": 5')" \
    "label" "5 classes"
expect data_three_channels "$(train_data "$data" '"d": 16, "layers": 1, "heads": 2, "mlp": 32, "channels": 3')" \
    "1 channel" "channels = 3"

# ---- Model files -----------------------------------------------------------------------
parents_case() { # parents_case NAME PARENT WORD...: fuse p.h5 with PARENT
    local name=$1 parent=$2
    shift 2
    expect "$name" '{"tasks": ['"$(fuse @O@/p.h5 "$parent")"']}' "$@"
}
parents_case missing_parent @O@/none.h5 "none.h5" 'parents\[1\]' "not found"
parents_case parent_not_hdf5 @M@/text.h5 "text.h5" "not an HDF5 file"
parents_case parent_garbage_hdf5 @M@/garbage.h5 "garbage.h5"
parents_case parent_truncated @M@/truncated.h5 "truncated.h5" 'parents\[1\]'
parents_case parent_is_directory @M@/a_directory.h5 "a_directory.h5" "directory"
parents_case model_no_format @M@/no-format.h5 "no-format.h5" "format"
parents_case model_other_format @M@/other-format.h5 "pytorch-state-dict" "tfuse-model"
parents_case model_version_2 @M@/version-2.h5 "format_version 2"
parents_case model_other_architecture @M@/other-arch.h5 "architecture 'bert'"
parents_case model_missing_tensor @M@/no-fc1.h5 "params/fc1_w" "(1, 32, 16)"
parents_case model_missing_params @M@/no-params.h5 "no dataset" "params/"
parents_case model_wrong_shape @M@/wrong-shape.h5 "params/qkv_w" "(1, 47, 16)" "(1, 48, 16)"
parents_case model_integer_tensor @M@/int-dataset.h5 "params/head_b" "floating point"
parents_case model_group_for_tensor @M@/group-not-dataset.h5 "params/lnf_g" "not a dataset"
parents_case model_bad_heads @M@/bad-heads.h5 "bad-heads.h5" "multiple of heads"
parents_case model_zero_layers @M@/zero-layers.h5 "zero-layers.h5" "layers = 0"
parents_case model_string_width @M@/string-d.h5 "string-d.h5" "'d'" "integer"
parents_case model_huge_width @M@/huge-d.h5 "huge-d.h5" "out of range"
parents_case model_nan_weight @M@/nan-weight.h5 "nan-weight.h5" "params/fc2_w" "NaN" "(0, 3, 5)"
parents_case model_inf_weight @M@/inf-weight.h5 "inf-weight.h5" "params/pos" "infinite" "(2, 1)"

# ---- Model files that crash or hang HDF5 -----------------------------------------------
# Inputs found by fuzzing (tests/fuzz/regress/model): HDF5 1.10 crashes on them, or never
# finishes decoding them, while reading their attributes. tfuse parses a model file first
# in a probe child process, so each case must end with one error naming the file.
# The first case reads the crashing file as parents[1] (the model checks), the second as
# parents[0] (opened first to read its architecture). Both files crash HDF5 on every run;
# heap-overread.h5 is left out because whether its over-read crashes depends on the heap.
regress=$here/../fuzz/regress/model
cp "$regress"/*.h5 "$M/"
parents_case hdf5_crash_parent @M@/memcpy-overlap.h5 "memcpy-overlap.h5" 'parents\[1\]' \
    "HDF5 crashed" "signal" "the file is corrupt"
expect hdf5_crash_first_parent '{"tasks": ['"$(fuse @M@/wild-pointer.h5 @O@/p.h5)"']}' \
    "wild-pointer.h5" 'parents\[0\]' "HDF5 crashed" "signal" "the file is corrupt"
expect hdf5_crash_validate --validate '{"tasks": ['"$(fuse @O@/p.h5 @M@/wild-pointer.h5)"']}' \
    "wild-pointer.h5" "HDF5 crashed" "signal" "the file is corrupt"
TFUSE_PROBE_SECONDS=1 parents_case hdf5_hang @M@/endless-decoding.h5 "endless-decoding.h5" \
    "timed out after 1 s" "TFUSE_PROBE_SECONDS"
parents_case hdf5_huge_allocation @M@/huge-allocation.h5 "huge-allocation.h5" "corrupt"
# The model_* cases above run the model checks in the probe child too, so their precise
# messages show that a failure found in the child reaches the parent whole.

# Probes of valid parents print nothing: no warning of Open MPI about the fork and no
# output of the probe children.
if selected probe_quiet; then
    write_job probe_quiet '{"tasks": ['"$(fuse @O@/p.h5 @O@/q.h5)"']}'
    before=$(snapshot)
    launch --validate "$J/probe_quiet.json" > "$L/probe_quiet.out" 2> "$L/probe_quiet.err"
    rc=$?
    if [[ $rc -ne 0 ]]; then
        fail probe_quiet "exit status $rc: $(head -c 300 "$L/probe_quiet.err")"
    elif [[ -s $L/probe_quiet.err ]]; then
        fail probe_quiet "output on stderr: $(head -c 300 "$L/probe_quiet.err")"
    elif ! grep -q "valid (1 task)" "$L/probe_quiet.out"; then
        fail probe_quiet "no \"valid\" line: $(head -c 300 "$L/probe_quiet.out")"
    elif [[ "$before" != "$(snapshot)" ]]; then
        fail probe_quiet "--validate changed the output directory"
    else
        passed=$((passed + 1))
    fi
fi

# ---- Incompatible parents and methods --------------------------------------------------
parents_case incompatible_layers @O@/deep.h5 'parents\[1\]' "layers = 2" "layers = 1"
parents_case incompatible_classes @M@/classes-5.h5 "classes = 5" "classes = 10"
expect vanilla_different_widths '{"tasks": ['"$(fuse @O@/p.h5 @O@/wide.h5 '"methods": [{"name": "v", "method": "vanilla"}]')"']}' \
    "vanilla" "d = 24" "equal shapes"
expect identity_different_widths '{"tasks": ['"$(fuse @O@/p.h5 @O@/wide.h5 '"methods": [{"name": "i", "residual": "identity"}]')"']}' \
    "identity" "d = 24"
expect window_too_large '{"tasks": ['"$(fuse @O@/p.h5 @O@/q.h5 '"methods": [{"name": "w", "tokens": "window", "window": 5}]')"']}' \
    "window = 5" "grid side 4"
expect too_many_calibration '{"tasks": [{"task": "fuse", "parents": ["@O@/p.h5", "@O@/q.h5"], '"$data"', "calibration_samples": 5000, "methods": [{"name": "ot"}], "output_dir": "@O@/fused"}]}' \
    "calibration_samples = 5000" "600 training images"
expect batch_too_large '{"tasks": ['"$(train @O@/x.h5 '"batch_size": 601')"']}' "batch_size = 601" "600 training images"
expect finetune_batch_too_large '{"tasks": ['"$(fuse @O@/p.h5 @O@/q.h5 '"methods": [{"name": "ot"}], "finetune": {"steps": 1, "batch_size": 1000}')"']}' \
    "finetune.batch_size = 1000"
expect later_parent_incompatible '{"tasks": ['"$(train @O@/new.h5)"', '"$(fuse @O@/new.h5 @O@/deep.h5)"']}' \
    "layers = 2"

# ---- Outputs -----------------------------------------------------------------------------
expect existing_output '{"tasks": ['"$(train @O@/p.h5)"']}' "p.h5" "exists" '"overwrite": true' \
    '"resume": true at the top level of the job'
mkdir -p "$O/fused" && cp "$O/q.h5" "$O/fused/ot.h5"
expect existing_fused_output '{"tasks": ['"$(fuse @O@/p.h5 @O@/q.h5)"']}' "fused/ot.h5" "exists"
rm -rf "$O/fused"
expect existing_report '{"tasks": ['"$(fuse @O@/p.h5 @O@/q.h5 '"methods": [{"name": "ot"}], "report": "@O@/q.h5"')"']}' "report" "exists"
expect unwritable_output '{"tasks": ['"$(train @W@/a_file/x.h5)"']}' "a_file" "not a directory"
expect unwritable_deep_output '{"tasks": ['"$(train @W@/a_file/sub/dir/x.h5)"']}' "a_file" "not a directory"
expect output_is_directory '{"tasks": ['"$(train @O@/dir_output.h5 '"steps": 1, "overwrite": true')"']}' "dir_output.h5" "is a directory"
expect duplicate_outputs '{"tasks": ['"$(train @O@/x.h5)"', '"$(train @O@/x.h5)"']}' "same file" "x.h5"
expect output_is_parent '{"tasks": ['"$(fuse @O@/p.h5 @O@/q.h5 '"methods": [{"name": "ot"}], "report": "@O@/q.h5", "overwrite": true')"']}' \
    "also an input" "q.h5"
expect output_is_data '{"tasks": ['"$(train @D@/test-images '"steps": 1, "overwrite": true')"']}' "also an input" "test-images"
expect no_directory_created --validate '{"tasks": ['"$(train @O@/new/dir/x.h5)"', '"$(train @O@/y.h5 '"batch_size": 601')"']}' \
    'tasks\[1\].batch_size'
expect no_directory_created_run '{"tasks": ['"$(train @O@/new/dir/x.h5)"', '"$(train @O@/y.h5 '"batch_size": 601')"']}' \
    'tasks\[1\].batch_size'
if [[ -e $O/new ]]; then fail no_directory_created "a failed validation created $O/new"; fi

# A job that retrains an existing parent (with overwrite) and then fuses it is valid: the
# train task's output may be a parent of a later fuse task.
if selected retrain_then_fuse_valid; then
    write_job retrain_then_fuse_valid '{"tasks": ['"$(train @O@/q.h5 '"steps": 1, "overwrite": true')"', '"$(fuse @O@/p.h5 @O@/q.h5)"']}'
    before=$(snapshot)
    launch --validate "$J/retrain_then_fuse_valid.json" > "$L/retrain_then_fuse_valid.out" \
        2> "$L/retrain_then_fuse_valid.err"
    rc=$?
    if [[ $rc -ne 0 ]]; then
        fail retrain_then_fuse_valid "exit status $rc: $(head -c 300 "$L/retrain_then_fuse_valid.err")"
    elif [[ "$before" != "$(snapshot)" ]]; then
        fail retrain_then_fuse_valid "--validate changed the output directory"
    else
        passed=$((passed + 1))
    fi
fi

# ---- Faults --------------------------------------------------------------------------------
# A run killed by SIGTERM during training must leave no output and no temporary file.
if selected sigterm_mid_training; then
    write_job sigterm_mid_training '{"tasks": [{"task": "train", "model": {'"$tiny"'}, '"$data"', "steps": 100000, "batch_size": 32, "log_every": 5, "output": "@O@/killed.h5"}]}'
    before=$(snapshot)
    if [[ $ranks -eq 1 ]]; then
        "$tfuse" "$J/sigterm_mid_training.json" > "$L/sigterm.out" 2>&1 &
    else
        "$mpiexec" -n "$ranks" "$tfuse" "$J/sigterm_mid_training.json" > "$L/sigterm.out" 2>&1 &
    fi
    pid=$!
    for _ in $(seq 1 300); do
        grep -q "step 10/" "$L/sigterm.out" 2> /dev/null && break
        sleep 0.1
    done
    trained=$(grep -c "step 10/" "$L/sigterm.out")
    kill -TERM "$pid"
    wait "$pid"
    rc=$?
    if [[ $trained -eq 0 ]]; then
        fail sigterm_mid_training "training did not start: $(head -c 300 "$L/sigterm.out")"
    elif [[ $rc -eq 0 ]]; then
        fail sigterm_mid_training "exit status 0 after SIGTERM"
    elif [[ "$before" != "$(snapshot)" ]]; then
        fail sigterm_mid_training "the output directory changed: $(cd "$O" && find . -newer "$J/sigterm_mid_training.json")"
    else
        passed=$((passed + 1))
    fi
fi

# --validate of a valid job succeeds, warns about a stale temporary file of an earlier
# run, and creates nothing (not even the output directory).
if selected validate_clean; then
    touch "$O/stale.h5.tmp.12345.0"
    write_job validate_clean '{"tasks": ['"$(train @O@/stale.h5)"', '"$(fuse @O@/stale.h5 @O@/q.h5 '"methods": [{"name": "ot"}], "calibration_samples": 1, "report": "@O@/not/yet/r.json"')"']}'
    before=$(snapshot)
    launch --validate "$J/validate_clean.json" > "$L/validate_clean.out" 2> "$L/validate_clean.err"
    rc=$?
    if [[ $rc -ne 0 ]]; then
        fail validate_clean "exit status $rc: $(head -c 300 "$L/validate_clean.err")"
    elif ! grep -q "valid (2 tasks)" "$L/validate_clean.out"; then
        fail validate_clean "no \"valid\" line: $(head -c 300 "$L/validate_clean.out")"
    elif ! grep -q "stale.h5.tmp.12345.0" "$L/validate_clean.err"; then
        fail validate_clean "no warning about the temporary file: $(head -c 300 "$L/validate_clean.err")"
    elif [[ $ranks -gt 1 ]] && ! grep -q "calibration_samples = 1 is smaller than the $ranks ranks" "$L/validate_clean.err"; then
        fail validate_clean "no warning about idle ranks: $(head -c 300 "$L/validate_clean.err")"
    elif grep '^warning' "$L/validate_clean.err" | grep -qv "^warning: $J/validate_clean.json: "; then
        fail validate_clean "a warning does not start with the job file: $(grep '^warning' "$L/validate_clean.err" | head -c 300)"
    elif [[ "$before" != "$(snapshot)" || -e $O/not ]]; then
        fail validate_clean "--validate changed the output directory"
    else
        passed=$((passed + 1))
    fi
    rm -f "$O/stale.h5.tmp.12345.0"
fi

leftovers=$(find "$work" -name '*.tmp*' | wc -l)
if [[ $leftovers -ne 0 ]]; then fail temporaries "$leftovers temporary files left"; else passed=$((passed + 1)); fi

echo "bad_inputs ($ranks ranks, $which): $passed passed, $failed failed, $skipped skipped in $(($(date +%s) - started)) s"
[[ $failed -eq 0 ]]
