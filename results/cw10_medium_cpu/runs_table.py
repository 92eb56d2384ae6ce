"""One row per CW10 run: each task's own success right after it (the diagonal of R), how many reach 0.5, the
average success and forgetting, Task 1 at the end, and the costs (wall time from `/usr/bin/time -v`, kept in the
run's time.txt, else the wall time summary.json records; s/step and minutes of evaluation rollouts from the
timing.json of the first committed runs, else from the training and evaluation times summary.json records). F is
Continual World's, as in `metrics.table1`, recomputed from each summary's per-task forgetting: the mean over all N
tasks, the last one's 0 included. Then, per method, the diagonal averaged over its seeds and how many of those
means reach 0.5. Reads run files only.

    python results/cw10_medium_cpu/runs_table.py results/cw10_medium_cpu/runs/*-s? > results/cw10_medium_cpu/runs.md
"""
import json
import re
import sys
from pathlib import Path


def wall_time(run, summary):
    """h:mm:ss from RUN/time.txt (the committed runs), RUN.time (a run folder beside its /usr/bin/time file) or the
    wall time in summary.json's provenance (runs written by the current scripts)."""
    for path in (run / "time.txt", Path(f"{run}.time")):
        if path.exists():
            return re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", path.read_text()).group(1)
    wall = summary.get("provenance", {}).get("wall_s")
    return "—" if wall is None else f"{int(wall // 3600)}:{int(wall % 3600 // 60):02d}:{int(wall % 60):02d}"


def main(run_dirs):
    if not run_dirs:
        print("error: give run folders (RUN/summary.json)", file=sys.stderr)
        raise SystemExit(2)
    diagonals = {}
    print("| run | own success (diagonal of R) | >= 0.5 | SR | F | Task 1 at the end | wall | s/step | rollout min |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for d in map(Path, run_dirs):
        s = json.loads((d / "summary.json").read_text())
        forgetting = sum(s["per_task_forgetting"]) / s["n_tasks_trained"]
        timing = json.loads((d / "timing.json").read_text()) if (d / "timing.json").exists() else None
        made = s.get("provenance", {})
        if timing is None and "train_s" in made:  # runs written by the current scripts (runfiles.Clock)
            steps = s["extra"]["first_task_steps"] + s["extra"]["steps_per_task"] * (s["n_tasks_trained"] - 1)
            timing = {"s_per_step": made["train_s"] / steps, "rollout_s": made["eval_s"]}
        diag = [s["R"][i][i] for i in range(len(s["R"]))]
        diagonals.setdefault(s["method"], []).append(diag)
        print(f"| {d.name} | {', '.join(f'{v:.2f}' for v in diag)} | {sum(v >= 0.5 for v in diag)}/{len(diag)} "
              f"| {s['average']:.2f} | {forgetting:.2f} | {s['R'][-1][0]:.2f} | {wall_time(d, s)} "
              + (f"| {timing['s_per_step']:.3f} | {timing['rollout_s'] / 60:.1f} |" if timing else "| — | — |"))
    print("\n| method | seeds | own success averaged over seeds | means >= 0.5 |\n|---|---:|---|---|")
    for method, rows in diagonals.items():
        if len({len(r) for r in rows}) > 1:
            print(f"error: {method} runs trained different numbers of tasks", file=sys.stderr)
            raise SystemExit(2)
        mean = [sum(col) / len(col) for col in zip(*rows)]
        print(f"| {method} | {len(rows)} | {', '.join(f'{v:.2f}' for v in mean)} | "
              f"{sum(v >= 0.5 for v in mean)}/{len(mean)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
