"""Rebuild summary.json / summary.md / figure2.png of CW10 runs made before the task's end was always a curve point.

    python results/cw10_medium_cpu/add_task_ends.py RUN [RUN ...]

Runs made before that fix (commit 7b3d001 and earlier) with a --curve list that does not name a task's last step
(the medium preset's "50,250") recorded no end-of-task point, so Table 2's reference (metrics.reference, the last
curve point in Task 1) was a mid-task value: hammer 0.00 at step 250 instead of 0.90 at its end, and every cell n/a.
metrics.reference now never takes a mid-task point, and train_cw10 adds the boundary evaluation to the curve; this
script does the same from the run's metrics.jsonl ("eval" records: row k of R at the end of task k) and rewrites the
summary with train_cw10.write_summary's own code. Nothing else changes: R, the curve points that were measured and
the Task-1 paths are read back, not recomputed.
"""
import dataclasses
import json
import os
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import train_cw10  # noqa: E402


def main(runs):
    for run in runs:
        saved = json.load(open(os.path.join(run, "config.json")))
        cfg = train_cw10.Config(**{f.name: saved[f.name] for f in dataclasses.fields(train_cw10.Config)})
        records = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
        evals = [r for r in records if r["kind"] == "eval"]
        tasks = train_cw10.task_list(cfg)
        curves = {}
        for r in records:
            if r["kind"] == "curve":
                curves.setdefault(str(r["eval_task"]), []).append(
                    (r["global_step"], r["in_task_step"], r["task"], r["success"]))
        for r in evals:  # the end of task k: its evaluation row, at the task's last in-task step
            k = r["task"]
            point = (r["global_step"], train_cw10.task_steps(cfg, k), k, r["success"][0])
            if point[:3] not in [p[:3] for p in curves.setdefault("0", [])]:
                curves["0"].append(point)
        curves["0"].sort()
        state = {"R": [r["success"] + [None] * (len(tasks) - len(r["success"])) for r in evals],
                 "curves": curves, "transitions": [r["global_step"] for r in evals[:-1]]}
        folder = types.SimpleNamespace(out=run)
        summary = train_cw10.write_summary(cfg, folder, state, tasks)
        print(f"{run}: Task 1 reference {summary['R'][0][0]:.2f}, {len(curves['0'])} Task-1 curve points")


if __name__ == "__main__":
    main(sys.argv[1:])
