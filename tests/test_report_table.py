"""tools/report_table.py on a ViT and a BERT report written here: every parent and method
row carries its own numbers in the right column, and the finetune columns appear only when
the job finetuned.

usage: test_report_table.py TOOLS/report_table.py
"""
import json
import os
import subprocess
import sys
import tempfile

failures = 0


def check(cond, what):
    global failures
    if not cond:
        failures += 1
        print("FAILED:", what)


def rows(text):
    return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| ") and "---" not in line}


def main():
    tool = sys.argv[1]
    vit = {"parents": [{"file": "/x/parent-a.h5", "anchor": True, "test_accuracy": 0.8761},
                       {"file": "/x/parent-b.h5", "anchor": False, "test_accuracy": 0.8791}],
           "ensemble": {"test_accuracy": 0.8934, "test_loss": 0.29},
           "finetune_steps": 0,
           "methods": [{"name": "vanilla", "one_shot_accuracy": 0.215},
                       {"name": "ot", "one_shot_accuracy": 0.75}]}
    bert = {"architecture": "bert", "unigram_loss": 5.8806, "eval_tokens": 5718,
            "parents": [{"file": "p.h5", "anchor": True, "heldout_loss": 5.6016,
                         "heldout_perplexity": 270.83, "heldout_accuracy": 0.1259}],
            "ensemble": {"heldout_loss": 5.5, "heldout_perplexity": 244.69,
                         "heldout_accuracy": 0.13},
            "finetune_steps": 40,
            "methods": [{"name": "ot-exact", "one_shot_loss": 5.8086,
                         "one_shot_perplexity": 333.15, "one_shot_accuracy": 0.1013,
                         "finetuned_loss": 5.6839, "finetuned_perplexity": 294.09,
                         "finetuned_accuracy": 0.1173},
                        {"name": "no-finetune", "one_shot_loss": 6.0,
                         "one_shot_perplexity": 403.4, "one_shot_accuracy": 0.11}]}

    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, report in (("vit.json", vit), ("bert.json", bert)):
            paths.append(os.path.join(tmp, name))
            with open(paths[-1], "w") as f:
                json.dump(report, f)
        out = subprocess.run([sys.executable, tool] + paths, capture_output=True, text=True,
                             check=True).stdout
        # A file that is not a report: the valid one before it is still printed, and the
        # message names the file and the missing key.
        job = os.path.join(tmp, "job.json")
        with open(job, "w") as f:
            json.dump({"tasks": []}, f)
        mixed = subprocess.run([sys.executable, tool, paths[0], job], capture_output=True,
                               text=True)
        check(mixed.returncode == 1, f"valid then invalid file: exit status {mixed.returncode}")
        check("parent-a.h5" in mixed.stdout, f"table of the valid file missing: {mixed.stdout}")
        check(f"{job} is not a tfuse fuse report: it has no key 'methods'" in mixed.stderr,
              f"invalid file message: {mixed.stderr}")

    vit_part, bert_part = out.split("`" + paths[1] + "`")
    v = rows(vit_part)
    check(v.get("parent 0: parent-a.h5 (anchor)") == ["87.61"], f"ViT anchor row: {v}")
    check(v.get("parent 1: parent-b.h5") == ["87.91"], f"ViT parent row: {v}")
    check(v.get("ensemble of the parents") == ["89.34"], f"ViT ensemble row: {v}")
    check(v.get("vanilla") == ["21.50"], f"ViT vanilla row: {v}")
    check(v.get("ot") == ["75.00"], f"ViT OT row: {v}")
    check("after" not in vit_part, "ViT report without finetune shows finetune columns")

    b = rows(bert_part)
    check(b.get("parent 0: p.h5 (anchor)") == ["5.602", "270.8", "12.59", "", "", ""],
          f"BERT parent row: {b}")
    check(b.get("ensemble of the parents") == ["5.500", "244.7", "13.00", "", "", ""],
          f"BERT ensemble row: {b}")
    check(b.get("ot-exact") == ["5.809", "333.1", "10.13", "5.684", "294.1", "11.73"],
          f"BERT method row: {b}")
    check(b.get("no-finetune") == ["6.000", "403.4", "11.00", "", "", ""],
          f"BERT method without finetune: {b}")
    check("after 40 steps, loss" in bert_part, "BERT finetune column header missing")
    check("Unigram baseline: 5.881 nats over 5718" in bert_part, "BERT unigram line missing")

    helped = subprocess.run([sys.executable, tool, "--help"], capture_output=True, text=True)
    check(helped.returncode == 0, f"--help exit status: {helped}")
    check("usage:" in helped.stdout, f"--help text: {helped}")
    bogus = subprocess.run([sys.executable, tool, "--bogus"], capture_output=True, text=True)
    check(bogus.returncode == 2, f"unknown option exit status: {bogus}")
    check("unknown option --bogus" in bogus.stderr, f"unknown option message: {bogus}")
    bare = subprocess.run([sys.executable, tool], capture_output=True, text=True)
    check(bare.returncode == 2 and "usage:" in bare.stderr and not bare.stdout,
          f"no arguments: usage on stderr, exit status 2: {bare}")
    missing = subprocess.run([sys.executable, tool, "/nonexistent/report.json"],
                             capture_output=True, text=True)
    check(missing.returncode == 1, f"missing file exit status: {missing}")
    check("cannot read /nonexistent/report.json" in missing.stderr, f"missing file message: {missing}")
    check("Traceback" not in missing.stderr, f"missing file traceback: {missing}")

    print(f"report_table: {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
