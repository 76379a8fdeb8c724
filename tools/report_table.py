#!/usr/bin/env python3
"""Print fuse task JSON reports as Markdown tables.

usage: tools/report_table.py REPORT.json [REPORT.json ...]

A ViT report gives test accuracies in percent. A BERT report (its "architecture" is
"bert") gives the held-out masked-token loss in nats, the perplexity and the masked-token
accuracy in percent. Both have a column per stage: one shot and, when the job finetuned,
after the finetune. A row gives the parents' ensemble (their predicted probabilities
averaged with the task's weights). Uses only the standard library.
"""
import json
import os
import sys


def vit_cells(item, prefix):
    key = "test_accuracy" if prefix == "parent" else f"{prefix}_accuracy"
    value = item.get(key)
    return [f"{100 * value:.2f}" if value is not None else ""]


def bert_cells(item, prefix):
    keys = ("heldout_loss", "heldout_perplexity", "heldout_accuracy") if prefix == "parent" \
        else (f"{prefix}_loss", f"{prefix}_perplexity", f"{prefix}_accuracy")
    loss, ppl, acc = (item.get(k) for k in keys)
    if loss is None:
        return ["", "", ""]
    return [f"{loss:.3f}", f"{ppl:.1f}", f"{100 * acc:.2f}"]


def table(path):
    with open(path) as f:
        report = json.load(f)
    bert = report.get("architecture") == "bert"
    cells = bert_cells if bert else vit_cells
    stage_cols = ["loss", "perplexity", "accuracy %"] if bert else ["accuracy %"]
    finetuned = any(("finetuned_loss" if bert else "finetuned_accuracy") in m
                    for m in report["methods"])
    steps = report.get("finetune_steps", 0)
    head = ["model"] + [f"one-shot {c}" for c in stage_cols]
    if finetuned:
        head += [f"after {steps} steps, {c}" for c in stage_cols]
    lines = [f"`{path}`", ""]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    blank = [""] * len(stage_cols) if finetuned else []
    for i, p in enumerate(report["parents"]):
        name = os.path.basename(p["file"]) + (" (anchor)" if p["anchor"] else "")
        lines.append("| " + " | ".join([f"parent {i}: {name}"] + cells(p, "parent") + blank)
                     + " |")
    if "ensemble" in report:
        lines.append("| " + " | ".join(["ensemble of the parents"] +
                                       cells(report["ensemble"], "parent") + blank) + " |")
    for m in report["methods"]:
        row = [m["name"]] + cells(m, "one_shot")
        if finetuned:
            row += cells(m, "finetuned")
        lines.append("| " + " | ".join(row) + " |")
    if bert and "unigram_loss" in report:
        lines += ["", f"Unigram baseline: {report['unigram_loss']:.3f} nats over "
                  f"{report.get('eval_tokens', '?')} masked tokens."]
    return "\n".join(lines)


def main(paths):
    if not paths:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    if paths[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    options = [p for p in paths if p.startswith("-") and p != "-"]
    if options:
        print(f"report_table.py: unknown option {options[0]}; see --help", file=sys.stderr)
        return 2
    status = 0
    for i, path in enumerate(paths):
        try:
            text = table(path)
        except OSError as e:
            print(f"report_table.py: cannot read {path}: {e.strerror}", file=sys.stderr)
            status = 1
            continue
        except KeyError as e:
            print(f"report_table.py: {path} is not a tfuse fuse report: it has no key {e}",
                  file=sys.stderr)
            status = 1
            continue
        except (ValueError, TypeError) as e:
            print(f"report_table.py: {path} is not a tfuse fuse report: {e}", file=sys.stderr)
            status = 1
            continue
        print(("\n" if i > 0 else "") + text, flush=True)
    return status


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except BrokenPipeError:
        # The reader (e.g. head) stopped early: not an error. Keep Python from
        # reporting the closed stdout again at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
