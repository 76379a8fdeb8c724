#!/usr/bin/env bash
# End to end on real Fashion-MNIST, small: trains two tiny ViT parents on 3 000 images,
# fuses them (vanilla and three OT methods, with a short finetune) and checks the report,
# the fused model files and that nothing is left under a temporary name.
# usage: quick_fuse.sh TFUSE_MPI RANKS WORKDIR
set -euo pipefail
tfuse=$1 ranks=$2 work=$3
data=/usr/share/datasets/fashion-mnist
if [[ ! -r $data/t10k-images-idx3-ubyte.gz ]]; then
    echo "quick_fuse: $data is missing; install dataset-fashion-mnist" >&2
    exit 1
fi
rm -rf "$work"
mkdir -p "$work"
cat > "$work/job.json" <<JOB
{"tasks": [
 {"task": "train", "name": "a", "seed": 1, "steps": 150, "log_every": 50,
  "model": {"d": 16, "layers": 2, "heads": 2, "mlp": 32},
  "data": {"train_limit": 3000, "test_limit": 1000}, "optimizer": {"lr": 3e-3, "warmup_steps": 5},
  "output": "$work/a.h5"},
 {"task": "train", "name": "b", "seed": 2, "steps": 150, "log_every": 50,
  "model": {"d": 16, "layers": 2, "heads": 2, "mlp": 32},
  "data": {"train_limit": 3000, "test_limit": 1000}, "optimizer": {"lr": 3e-3, "warmup_steps": 5},
  "output": "$work/b.h5"},
 {"task": "fuse", "parents": ["$work/a.h5", "$work/b.h5"], "calibration_samples": 40,
  "data": {"train_limit": 3000, "test_limit": 1000},
  "methods": [{"name": "vanilla", "method": "vanilla"},
              {"name": "exact-joint", "solver": "exact", "per_parent_statistics": true},
              {"name": "sinkhorn-mean", "solver": "sinkhorn", "epsilon": 0.05, "residual": "mean"},
              {"name": "weights-headaware", "cost": "weight", "attention": "head_aware"},
              {"name": "only-b", "method": "vanilla", "weights": [0, 1]}],
  "finetune": {"steps": 5},
  "output_dir": "$work/fused", "report": "$work/report.json", "save_aligned": true}
]}
JOB
mpirun -n "$ranks" "$tfuse" "$work/job.json" > "$work/log.txt" 2>&1 || {
    cat "$work/log.txt"
    echo "quick_fuse: tfuse-mpi failed at $ranks ranks" >&2
    exit 1
}
cat "$work/log.txt"

# Rerun with "resume": every output exists, so nothing is trained or fused again, and the
# report must come out with the same numbers.
cp "$work/report.json" "$work/report-first.json"
sed 's/^{"tasks": \[/{"resume": true, "tasks": [/' "$work/job.json" > "$work/resume.json"
mpirun -n "$ranks" "$tfuse" "$work/resume.json" > "$work/resume-log.txt" 2>&1 || {
    cat "$work/resume-log.txt"
    echo "quick_fuse: the resumed run failed at $ranks ranks" >&2
    exit 1
}
# Resume must not reuse a file made with other settings: changed method weights, and a
# changed finetune, each stop the run with a message naming the file and the setting.
sed 's/"weights": \[0, 1\]/"weights": [1, 0]/' "$work/resume.json" > "$work/resume-weights.json"
sed 's/"finetune": {"steps": 5}/"finetune": {"steps": 6}/' "$work/resume.json" > "$work/resume-finetune.json"
for variant in weights finetune; do
    if mpirun -n "$ranks" "$tfuse" "$work/resume-$variant.json" > "$work/resume-$variant.txt" 2>&1; then
        cat "$work/resume-$variant.txt"
        echo "quick_fuse: resume with a changed $variant reused the old files" >&2
        exit 1
    fi
done
grep -q "only-b.h5: resume cannot reuse this file: it was made with method.weights = \[0,1\], but the job has \[1,0\]" \
    "$work/resume-weights.txt" || { cat "$work/resume-weights.txt"; echo "quick_fuse: no message for changed weights" >&2; exit 1; }
grep -q "vanilla-finetuned.h5: resume cannot reuse this file: it was made with finetune.steps = 5, but the job has 6" \
    "$work/resume-finetune.txt" || { cat "$work/resume-finetune.txt"; echo "quick_fuse: no message for a changed finetune" >&2; exit 1; }
/usr/bin/python3 - "$work" <<'PY'
import json, os, sys, h5py
work = sys.argv[1]
report = json.load(open(os.path.join(work, "report.json")))
failures = []
checks = 0
def check(cond, what):
    global checks
    checks += 1
    if not cond:
        failures.append(what)
check(len(report["parents"]) == 2, "two parents in the report")
for p in report["parents"]:
    check(p["test_accuracy"] > 0.5, f"parent {p['file']} accuracy {p['test_accuracy']} > 0.5")
ens = report.get("ensemble", {})
check(0 <= ens.get("test_accuracy", -1) <= 1 and ens.get("test_loss", -1) > 0,
      f"ensemble accuracy and loss reported: {ens}")
names = [m["name"] for m in report["methods"]]
check(names == ["vanilla", "exact-joint", "sinkhorn-mean", "weights-headaware", "only-b"],
      f"methods {names}")
# A method's own weights replace the task's: weights [0, 1] give parent b unchanged.
only_b = report["methods"][-1]
check(only_b["one_shot_accuracy"] == report["parents"][1]["test_accuracy"],
      f"only-b one-shot {only_b['one_shot_accuracy']} equals parent b's accuracy")
with h5py.File(os.path.join(work, "fused", "only-b.h5"), "r") as f, \
     h5py.File(os.path.join(work, "b.h5"), "r") as g:
    same = all((f["params"][k][...] == g["params"][k][...]).all() for k in g["params"])
    check(same, "only-b.h5 holds parent b's parameters bitwise")
for m in report["methods"]:
    check(0 <= m["one_shot_accuracy"] <= 1, f"{m['name']} one-shot accuracy in [0, 1]")
    check("finetuned_accuracy" in m, f"{m['name']} has a finetuned accuracy")
    with h5py.File(os.path.join(work, "fused", m["name"] + ".h5"), "r") as f:
        check(f.attrs["architecture"] == b"vit" or f.attrs["architecture"] == "vit",
              f"{m['name']}.h5 architecture attribute")
        check(f["params/qkv_w"].shape == (2, 48, 16), f"{m['name']}.h5 qkv_w shape")
        if m["method"] != "vanilla":
            check("maps/parent1/layer0/qk" in f, f"{m['name']}.h5 has the Q/K map")
            plan = f["maps/parent1/layer0/fc1"][...]
            check(abs(plan.sum() - 1) < 1e-9, f"{m['name']} fc1 plan mass {plan.sum()}")
            check("aligned/parent1/params/fc1_w" in f, f"{m['name']}.h5 has the aligned parent")
first = json.load(open(os.path.join(work, "report-first.json")))
stages = ["statistics", "forward", "statistics_sums", "reduction", "ot_groups", "ot_local",
          "ot_broadcast", "alignment", "repair", "writing"]
for m in first["methods"]:
    t = m.get("timings")
    if m["method"] == "vanilla":
        check(t is None, "vanilla has no stage timings")
        continue
    check(t is not None and sorted(t) == sorted(stages), f"{m['name']} stage timings: {t}")
    if t is not None:
        check(all(v >= 0 for v in t.values()), f"{m['name']} timings are not negative: {t}")
        check(t["ot_local"] > 0 and t["alignment"] > 0 and t["writing"] > 0,
              f"{m['name']} OT, alignment and writing took time: {t}")
        weights = m["name"] == "weights-headaware"
        check((t["statistics"] > 0) != weights, f"{m['name']} statistics time: {t}")
for m in report["methods"]:
    check("timings" not in m, f"{m['name']} loaded on resume reports no stage timings")
    check(m.get("resumed") is True, f"{m['name']} is marked resumed in the second report")
check(all(m.get("resumed") is False for m in first["methods"]), "first report: nothing resumed")
check(first.get("finetune", {}).get("steps") == first["finetune_steps"], "finetune settings in the report")
job = json.load(open(os.path.join(work, "job.json")))
requested = {m["name"]: m for m in job["tasks"][2]["methods"]}
for m in first["methods"]:
    config = m.get("config", {})
    check(all(config.get(k) == v for k, v in requested[m["name"]].items()),
          f"{m['name']} config {config} contains the job's settings {requested[m['name']]}")
    if m["method"] == "ot":
        check({"cost", "solver", "residual", "attention", "tokens", "distance", "normalize",
               "repair", "zscore"} <= set(config), f"{m['name']} config lists the defaults too")
    with h5py.File(os.path.join(work, "fused", m["name"] + ".h5"), "r") as f:
        attr = f.attrs["fusion_config"]
        attr = attr.decode() if isinstance(attr, bytes) else attr
        check(json.loads(attr) == config, f"{m['name']}.h5 fusion_config equals the report's config")
check(first["methods"] == report["methods"] or
      [m["one_shot_accuracy"] for m in first["methods"]] ==
      [m["one_shot_accuracy"] for m in report["methods"]], "resumed run reports the same one-shot accuracies")
check([m.get("finetuned_accuracy") for m in first["methods"]] ==
      [m.get("finetuned_accuracy") for m in report["methods"]], "resumed run reports the same finetuned accuracies")
resume_log = open(os.path.join(work, "resume-log.txt")).read()
check(resume_log.count("skipped (resume)") == 2, "both train tasks skipped on resume")
check(resume_log.count("(resume)") == 2 + 2 * 5, "every fused and finetuned model loaded on resume")
check(" step " not in resume_log, "nothing trained on resume")
for m in report["methods"]:
    check(os.path.exists(os.path.join(work, "fused", m["name"] + "-finetuned.h5")), f"{m['name']}-finetuned.h5 written")
leftovers = [n for n in os.listdir(os.path.join(work, "fused")) if n.endswith(".tmp") or ".tmp" in n]
check(not leftovers, f"no temporary files left: {leftovers}")
for f in failures:
    print("FAIL", f)
print(f"quick_fuse: {checks - len(failures)} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
PY
