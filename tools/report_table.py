#!/usr/bin/env python3
"""Print a fuse task's JSON report (or several) as a Markdown table of test accuracies.

usage: tools/report_table.py REPORT.json [REPORT.json ...]
Uses only the standard library.
"""
import json
import os
import sys


def table(path):
    report = json.load(open(path))
    lines = [f"`{path}`", ""]
    finetuned = any("finetuned_accuracy" in m for m in report["methods"])
    steps = report.get("finetune_steps", 0)
    head = "| model | one-shot |" + (f" after {steps} finetune steps |" if finetuned else "")
    lines += [head, "|---|---|" + ("---|" if finetuned else "")]
    for i, p in enumerate(report["parents"]):
        name = os.path.basename(p["file"]) + (" (anchor)" if p["anchor"] else "")
        lines.append(f"| parent {i}: {name} | {100 * p['test_accuracy']:.2f} |" +
                     (" |" if finetuned else ""))
    for m in report["methods"]:
        row = f"| {m['name']} | {100 * m['one_shot_accuracy']:.2f} |"
        if finetuned:
            acc = m.get("finetuned_accuracy")
            row += f" {100 * acc:.2f} |" if acc is not None else " |"
        lines.append(row)
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print("\n\n".join(table(p) for p in sys.argv[1:]))
