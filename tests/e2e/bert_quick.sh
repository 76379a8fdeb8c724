#!/usr/bin/env bash
# End to end on the King James Bible, tiny: trains two BERT parents (d 32, 2 layers, a
# 300-token vocabulary trained by the first and reused by the second) on Genesis and
# Exodus, fuses them (vanilla and two OT methods, with a short finetune) and checks the
# report and the files against exact invariances computed with h5py: the vanilla file is
# the mean of the parents, an OT file is the mean of its aligned parents, the aligned
# anchor is the anchor. Then runs BERT jobs with bad input, each of which must fail with
# one error line naming the problem and leave the outputs untouched.
# usage: bert_quick.sh TFUSE_MPI RANKS WORKDIR CORPUS_SCRIPT
set -uo pipefail
tfuse=$1 ranks=$2 work=$3 corpus_script=$4
if ! command -v bible > /dev/null 2>&1; then
    echo "bert_quick: the bible program is missing; install bible-kjv (tools/setup.sh)" >&2
    exit 77
fi
rm -rf "$work"
mkdir -p "$work/out"
"$corpus_script" "$work/kjv.tsv" || exit 1
awk -F'\t' '$1 == "Genesis" || $1 == "Exodus" || $1 == "Ruth" || $1 == "Jonah"' \
    "$work/kjv.tsv" > "$work/small.tsv"

model='"model": {"architecture": "bert", "seq_len": 32, "d": 32, "layers": 2, "heads": 2, "mlp": 64}'
data='"data": {"corpus": "'"$work"'/small.tsv", "heldout": ["Ruth", "Jonah"]}'
cat > "$work/job.json" <<JOB
{"tasks": [
 {"task": "train", "name": "a", "seed": 1, "steps": 60, "log_every": 20, "batch_size": 16,
  "model": {"architecture": "bert", "vocab": 300, "seq_len": 32, "d": 32, "layers": 2, "heads": 2, "mlp": 64},
  $data, "optimizer": {"lr": 3e-3, "warmup_steps": 5}, "output": "$work/a.h5"},
 {"task": "train", "name": "b", "seed": 2, "steps": 60, "log_every": 20, "batch_size": 16,
  "vocab": "$work/a.h5.vocab", $model,
  $data, "optimizer": {"lr": 3e-3, "warmup_steps": 5}, "output": "$work/b.h5"},
 {"task": "fuse", "parents": ["$work/a.h5", "$work/b.h5"], "calibration_samples": 40, $data,
  "methods": [{"name": "vanilla", "method": "vanilla"},
              {"name": "exact-joint", "solver": "exact"},
              {"name": "sinkhorn-mean", "solver": "sinkhorn", "epsilon": 0.05, "residual": "mean",
               "attention": "head_aware"}],
  "finetune": {"steps": 6, "batch_size": 16, "distill": 0.5},
  "output_dir": "$work/fused", "report": "$work/report.json", "save_aligned": true}
]}
JOB
mpirun -n "$ranks" "$tfuse" "$work/job.json" > "$work/log.txt" 2>&1 || {
    cat "$work/log.txt"
    echo "bert_quick: tfuse-mpi failed at $ranks ranks" >&2
    exit 1
}
cat "$work/log.txt"

# The same parents scored by a one-rank fuse task, for the rank-count invariance check.
cat > "$work/one_rank.json" <<JOB
{"tasks": [{"task": "fuse", "parents": ["$work/a.h5", "$work/b.h5"], $data,
  "methods": [{"name": "vanilla", "method": "vanilla"}], "report": "$work/one_rank.json.out"}]}
JOB
mpirun -n 1 "$tfuse" "$work/one_rank.json" > "$work/one_rank.log" 2>&1 || {
    cat "$work/one_rank.log"
    echo "bert_quick: the one-rank fuse task failed" >&2
    exit 1
}
/usr/bin/python3 - "$work" <<'PY' || exit 1
import json, math, os, re, sys
import h5py
import numpy as np

work = sys.argv[1]
report = json.load(open(os.path.join(work, "report.json")))
failures = []
checks = 0


def check(cond, what):
    global checks
    checks += 1
    if not cond:
        failures.append(what)


def params(path, group="/"):
    with h5py.File(path, "r") as f:
        g = f[group]["params"]
        return {k: g[k][...].astype(np.float64) for k in g}


def close(a, b, what, tol=1e-6):
    worst = max(float(np.max(np.abs(a[k] - b[k]) / (1e-6 + np.abs(b[k])))) for k in b)
    check(worst < tol, f"{what}: largest relative error {worst:.3g}")


vocab_a = open(os.path.join(work, "a.h5.vocab")).read().split("\n")
check(len([t for t in vocab_a if t]) == 300, "a.h5.vocab has 300 tokens")
for name in ("a", "b"):
    with h5py.File(os.path.join(work, name + ".h5"), "r") as f:
        attr = f.attrs["vocab_file"]
        attr = attr.decode() if isinstance(attr, bytes) else attr
        check(attr == os.path.join(work, "a.h5.vocab"), f"{name}.h5 vocab_file is {attr}")
        check(int(f.attrs["vocab"]) == 300, f"{name}.h5 vocab size")
check(not os.path.exists(os.path.join(work, "b.h5.vocab")), "b reuses the vocabulary of a")

check(report["architecture"] == "bert", "report architecture")
check(len(report["parents"]) == 2, "two parents in the report")
uniform = math.log(300)
for p in report["parents"]:
    check(p["heldout_loss"] < uniform, f"parent {p['file']} loss {p['heldout_loss']} < ln 300")
    check(abs(p["heldout_perplexity"] - math.exp(p["heldout_loss"])) < 1e-6 * p["heldout_perplexity"],
          "perplexity is exp(loss)")
    check(0 < p["heldout_accuracy"] < 1, "parent accuracy in (0, 1)")
# The train task's held-out loss (log, 4 decimals) is the fuse task's for the saved model.
log = open(os.path.join(work, "log.txt")).read()
for name, p in zip(("a", "b"), report["parents"]):
    m = re.search(r"train %s: held-out MLM loss ([0-9.]+)" % name, log)
    check(m is not None, f"train {name} logs its held-out loss")
    if m:
        check(abs(float(m.group(1)) - p["heldout_loss"]) < 1.5e-4,
              f"train {name} held-out loss {m.group(1)} vs fuse {p['heldout_loss']}")
one = json.load(open(os.path.join(work, "one_rank.json.out")))
check(one["eval_tokens"] == report["eval_tokens"], "same masked tokens at one rank")
for p, q in zip(report["parents"], one["parents"]):
    check(abs(p["heldout_loss"] - q["heldout_loss"]) < 1e-5 * q["heldout_loss"],
          f"parent loss {p['heldout_loss']} vs {q['heldout_loss']} at one rank")
    check(abs(p["heldout_accuracy"] - q["heldout_accuracy"]) < 1e-12,
          f"parent accuracy {p['heldout_accuracy']} vs {q['heldout_accuracy']} at one rank")
check(abs(report["methods"][0]["one_shot_loss"] - one["methods"][0]["one_shot_loss"]) < 1e-5,
      "vanilla loss at one rank")
check(report["eval_tokens"] > 100, f"{report['eval_tokens']} masked held-out tokens")
# The ensemble averages probabilities, so by Jensen's inequality its loss is at most the
# weighted mean of the parents' losses. At one rank it is the same up to rounding.
ens = report.get("ensemble", {})
mean_loss = sum(p["weight"] * p["heldout_loss"] for p in report["parents"])
check(0 < ens.get("heldout_loss", -1) <= mean_loss + 1e-6,
      f"ensemble loss {ens.get('heldout_loss')} <= parents' mean {mean_loss}")
check(0 < ens.get("heldout_accuracy", -1) < 1, f"ensemble accuracy {ens.get('heldout_accuracy')}")
check(abs(ens.get("heldout_loss", 0) - one.get("ensemble", {}).get("heldout_loss", 1)) < 1e-5,
      "ensemble loss at one rank")
names = [m["name"] for m in report["methods"]]
check(names == ["vanilla", "exact-joint", "sinkhorn-mean"], f"methods {names}")
for m in report["methods"]:
    check(math.isfinite(m["one_shot_loss"]), f"{m['name']} one-shot loss finite")
    check("finetuned_loss" in m, f"{m['name']} has a finetuned loss")

a = params(os.path.join(work, "a.h5"))
b = params(os.path.join(work, "b.h5"))
mean = {k: 0.5 * a[k] + 0.5 * b[k] for k in a}
close(params(os.path.join(work, "fused", "vanilla.h5")), mean, "vanilla = mean of parents")
for name in ("exact-joint", "sinkhorn-mean"):
    path = os.path.join(work, "fused", name + ".h5")
    al0 = params(path, "aligned/parent0")
    al1 = params(path, "aligned/parent1")
    close(al0, a, f"{name}: aligned anchor = anchor", 1e-7)
    close(params(path), {k: 0.5 * al0[k] + 0.5 * al1[k] for k in a},
          f"{name}: fused = mean of aligned parents")
    with h5py.File(path, "r") as f:
        plan = f["maps/parent1/layer0/fc1"][...]
        check(plan.shape == (64, 64), f"{name} fc1 plan shape {plan.shape}")
        check(abs(plan.sum() - 1) < 1e-9, f"{name} fc1 plan mass {plan.sum()}")
        check((plan >= 0).all(), f"{name} fc1 plan is non-negative")
leftovers = [n for n in os.listdir(os.path.join(work, "fused")) if ".tmp" in n]
check(not leftovers, f"no temporary files left: {leftovers}")
for f in failures:
    print("FAIL", f)
print(f"bert_quick run: {checks - len(failures)} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
PY

# ---- Bad input --------------------------------------------------------------------------
passed=0 failed=0
out=$work/out
cp "$work/a.h5" "$out/keep.h5"

# expect NAME JOB_TEXT WORD... : the job must fail with one error line containing every
# WORD and leave the files under $out unchanged.
expect() {
    local name=$1 text=$2
    shift 2
    printf '%s\n' "$text" > "$work/$name.json"
    local before after rc errors ok=1
    before=$(cd "$out" && find . -type f | sort | xargs -r md5sum)
    mpirun -n "$ranks" "$tfuse" "$work/$name.json" > "$work/$name.out" 2> "$work/$name.err"
    rc=$?
    errors=$(grep -c '^error' "$work/$name.err")
    if [[ $rc -eq 0 ]]; then echo "FAIL $name: exit status 0"; ok=0; fi
    if [[ $errors -ne 1 ]]; then echo "FAIL $name: expected one error line, got $errors"; ok=0; fi
    for word in "$@"; do
        if ! grep -q -- "$word" "$work/$name.err"; then
            echo "FAIL $name: message lacks \"$word\": $(head -c 300 "$work/$name.err")"
            ok=0
        fi
    done
    after=$(cd "$out" && find . -type f | sort | xargs -r md5sum)
    if [[ "$before" != "$after" ]]; then echo "FAIL $name: files under $out changed"; ok=0; fi
    if [[ $ok -eq 1 ]]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
}

train() { # train JSON fragment -> a train task writing $out/x.h5
    printf '{"tasks": [{"task": "train", "steps": 2, "batch_size": 4, "output": "%s/x.h5", %s}]}' \
        "$out" "$1"
}
fuse() { # fuse JSON fragment -> a fuse task of the two parents above
    printf '{"tasks": [{"task": "fuse", "parents": ["%s/a.h5", "%s/b.h5"], "report": "%s/r.json", %s}]}' \
        "$work" "$work" "$out" "$1"
}
vanilla='"methods": [{"name": "v", "method": "vanilla"}]'

expect bert_unknown_model_key "$(train "$data, \"model\": {\"architecture\": \"bert\", \"patch\": 4}")" \
    "tasks\[0\].model.patch"
expect bert_image_data_key "$(train "$model, \"data\": {\"corpus\": \"$work/small.tsv\", \"train_images\": \"x\"}")" \
    "tasks\[0\].data.train_images"
expect bert_heads_width "$(train "$data, \"model\": {\"architecture\": \"bert\", \"d\": 30, \"heads\": 4}")" \
    "d = 30" "heads = 4"
expect bert_missing_corpus "$(train "$model, \"data\": {\"corpus\": \"$work/none.tsv\"}")" \
    "none.tsv" "bible_corpus.sh"
expect bert_unknown_book "$(train "$model, \"data\": {\"corpus\": \"$work/small.tsv\", \"heldout\": [\"Tobit\"]}")" \
    "Tobit"
expect bert_heldout_not_array "$(train "$model, \"data\": {\"corpus\": \"$work/small.tsv\", \"heldout\": \"Ruth\"}")" \
    "heldout must be an array"
expect bert_mask_prob_range "$(train "$model, \"data\": {\"corpus\": \"$work/small.tsv\", \"mask_prob\": 1.5}")" \
    "mask_prob = 1.5"
expect bert_vocab_size_mismatch "$(train "$data, \"vocab\": \"$work/a.h5.vocab\", \"model\": {\"architecture\": \"bert\", \"vocab\": 512}")" \
    "model.vocab = 512" "300 tokens"
expect bert_vocab_missing "$(train "$data, $model, \"vocab\": \"$work/none.vocab\"")" \
    "tasks\[0\].vocab" "none.vocab"
expect vit_vocab_key "$(train "\"model\": {\"d\": 16}, \"vocab\": \"$work/a.h5.vocab\"")" \
    "vocab applies only"
echo "[PAD]" > "$out/y.h5.vocab"
expect bert_vocab_output_exists "$(printf '{"tasks": [{"task": "train", "steps": 2, "output": "%s/y.h5", %s, %s}]}' "$out" "$model" "$data")" \
    "y.h5.vocab exists"
expect bert_tokens_cls "$(fuse "$data, \"methods\": [{\"name\": \"ot\", \"tokens\": \"cls\"}]")" \
    "methods\[0\]" "tokens"
expect bert_cost_weight "$(fuse "$data, \"methods\": [{\"name\": \"ot\", \"cost\": \"weight\"}]")" \
    "activation"
expect bert_repair "$(fuse "$data, \"methods\": [{\"name\": \"ot\", \"repair\": \"stream\"}]")" \
    "repair"
expect bert_fuse_image_data "$(fuse "$vanilla")" \
    "verse corpus"
echo "not an HDF5 file" > "$out/text.h5"
expect bert_parent_not_hdf5 "$(printf '{"tasks": [{"task": "fuse", "parents": ["%s/a.h5", "%s/text.h5"], %s, %s}]}' "$work" "$out" "$data" "$vanilla")" \
    "parents\[1\]" "text.h5"
expect bert_calibration_too_many "$(fuse "$data, $vanilla, \"calibration_samples\": 100000")" \
    "calibration_samples = 100000"

echo "bert_quick bad input: $passed passed, $failed failed"
exit $((failed > 0))
