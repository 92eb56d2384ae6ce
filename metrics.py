"""Continual-learning metrics and the aggregation CLI (paper Section 4, Tables 1-2, Figure 2, App. D).
Figure 2 and the R heatmaps are drawn by figures.py.

Shared by `train_cw10.py` (score = success rate, higher is better) and `train_imagenet.py` (score = FID, lower is
better). Nothing here knows about models: it works on score matrices, evaluation curves and JSON files.

Notation
    R[i][j]   score of task j measured right after finishing training task i (j <= i); None for j > i.
              Success rates are fractions in [0, 1]; tables print them as percent (paper Table 1: "88.3%").
    average   mean_j R[-1][j] over the tasks trained so far (Table 1: SR for CW10, AFID for ImageNet).
    F_j       forgetting of task j = how much worse it got from the end of its own training to the end of the run:
              R[j][j] - R[-1][j] (success) or R[-1][j] - R[j][j] (FID); F = (1/N) sum_j F_j over all N tasks
              trained, the last task's F = 0 included (Section 4.2 follows Continual World: Wolczyk et al. 2021,
              awarelab/continual_world, results_processing/tables.py, calculate_forgetting_individual and
              calculate_metrics, which average over every task of the sequence). The image experiment (and the
              toy) use the same rule with FID's sign (paper Section 4.1: "the change in a task's FID from when it
              is first learned to the end of training"). CW10 tables print F in percentage points (paper: "4.4").
    steps-to-threshold (Section 4.3, Table 2): for an evaluated task j with initial optimum ref = R[j][j], after
              each later transition T_k, the first in-task step s (1-based: gradient updates since T_k) at which
              SR_j >= alpha * ref (alpha in 0.99, 0.9, 0.8) or FID_j <= (1 + tau) * ref (tau in 0.1, 0.2, 0.3);
              None ("—") if it is never met during task k. Steps are resolved at the evaluation points of
              `eval_schedule` (2, 4, 6, 8, 10, 15, ..., 100, 150, ..., 1000, 2000, ...). With SR0 = 0 (task
              never learned) every target alpha * 0 is met trivially, so re-convergence is undefined: such cells
              hold "n/a" (`UNDEFINED`), not a step count.

summary.json (written by both training scripts with `build_summary`; read by `aggregate`)
    schema_version        1
    method                "finetune" | "ewc" | "replay" | "ftml" | "vrmcl" | "tr"
    seed                  int
    experiment            "cw10" | "imagenet"
    task_names            list of n_tasks names, in training order
    n_tasks_trained       rows of R (tasks finished; < n_tasks for a truncated run: all-None rows are dropped)
    score_name            "success" (fraction in [0, 1]) | "fid"
    higher_is_better      true for success, false for FID
    R                     the score matrix above, n_tasks_trained rows of n_tasks entries (None above the diagonal)
    average               Table 1 SR / AFID (same unit as R)
    forgetting            Table 1 F (same unit as R; None with a single task)
    per_task_forgetting   [F_0, ..., F_{t-2}]
    thresholds            alphas (success) or taus (FID) of Table 2
    reconvergence         {"T<j+1>": {str(threshold): {"T<k+1>": steps | None, ...}}} for every evaluated task j
                          whose curve was logged ("T1" = Table 2; the others = Appendix D Tables 8-23)
    task1_curve           [[global_step, score], ...] of Task 1 (Figure 2), global_step = gradient updates so far
    transitions           global steps at which tasks 2, 3, ... begin (Figure 2's dashed lines)
    extra                 free dict (e.g. steps_per_task, sample counts); "dataset", "extractor", "is_proxy",
                          "sequence" (fid.py's extractor and proxy flag; CW10 or which subsequence), when present,
                          must agree across aggregated runs
    provenance            what made the run (experiment.provenance): "starts" (commit, uncommitted changes, versions,
                          device, threads, host, start time of each start), "ended", "wall_s", "train_s", "eval_s"

Deviations from the paper
    - Table 2 with several seeds: paper: a single number per cell, rule unstated; here: the mean over the seeds
      that re-converged, shown as "—" when fewer than half of the seeds re-converged and suffixed "(k/n)" when
      only k of n did (`aggregate_steps`).
    - Appendix D entries such as 16, 46, 5001 look like eval-schedule points + 1; here every table reports the
      in-task step count exactly as Table 2 does (2, 4, ..., 45, 5000).
    - Table 1 with one seed prints "± —" (no standard error can be estimated).
"""
import json
import math
import numbers
import os

import numpy as np

import figures
import runfiles

EXPERIMENTS = ("cw10", "imagenet", "toy")
METHOD_ORDER = ("finetune", "ewc", "replay", "ftml", "vrmcl", "tr")  # paper Table 1 row order
DISPLAY_NAMES = {"finetune": "Finetuning", "ewc": "EWC", "replay": "Replay", "ftml": "FTML", "vrmcl": "VRMCL",
                 "tr": "Trust Region"}
EXPERIMENT_TITLES = {"cw10": "CW10", "imagenet": "ImageNet-500", "toy": "2-D toy"}
SUCCESS_THRESHOLDS = (0.99, 0.9, 0.8)  # Table 2 alphas: SR_1 >= alpha * SR_1^(0)
FID_THRESHOLDS = (0.1, 0.2, 0.3)  # Table 2 taus: FID_1 <= (1 + tau) * FID_1^(0)
DASH = "—"
UNDEFINED = "n/a"  # Table 2 cell whose reference success is 0: the target alpha * 0 is met trivially
COMPARABILITY_EXTRA = ("dataset", "extractor", "is_proxy", "sequence")  # extra fields that must agree across runs
SUMMARY_FIELDS = ("method", "seed", "experiment", "task_names", "n_tasks_trained", "score_name", "higher_is_better",
                  "average", "forgetting", "thresholds", "reconvergence", "task1_curve", "transitions")


# ----------------------------------------------------------------------------- evaluation schedule, Table 1

def eval_schedule(steps_per_task, dense=True):
    """In-task step counts (1-based, since the task transition) at which the evaluated task(s) are scored.

    dense: 2, 4, 6, 8, 10, then every 5 to 100, every 50 to 1000, every 1000 after (the granularity of the
    paper's Table 2 entries: 2, 4, 15, 35, 550, 10000), capped at steps_per_task, always ending with it.
    dense=False: only the end of the task (enough for Table 1, not for Table 2).
    """
    if not isinstance(steps_per_task, int) or steps_per_task < 1:
        raise ValueError(f"steps_per_task must be a positive int, got {steps_per_task!r}")
    if not dense:
        return [steps_per_task]
    points = [2, 4, 6, 8, 10, *range(15, 101, 5), *range(150, 1001, 50), *range(2000, steps_per_task + 1, 1000)]
    return sorted({s for s in points if s <= steps_per_task} | {steps_per_task})


def curve_points(spec, steps_per_task):
    """The in-task steps of an evaluation curve from a --curve value: "dense" (eval_schedule), "end" (the task's
    last step), "off" (none) or comma-separated steps such as "250,500,1000" (each in 1..steps_per_task)."""
    if spec in ("dense", "end"):
        return eval_schedule(steps_per_task, dense=spec == "dense")
    if spec == "off":
        return []
    try:
        points = sorted({int(v) for v in spec.split(",") if v.strip()})
    except ValueError:
        points = []
    if not points or points[0] < 1 or points[-1] > steps_per_task:
        raise ValueError(f"--curve must be dense, end, off or steps in 1..{steps_per_task} like '250,500', "
                         f"got {spec!r}")
    return points


def task_curve_points(spec, task_steps):
    """curve_points for one task of task_steps updates when tasks differ in length (--first-task-steps): a list may
    name steps past the end of a shorter task, which that task skips. A set."""
    if spec in ("dense", "end", "off"):
        return set(curve_points(spec, task_steps))
    return {p for p in curve_points(spec, 10 ** 9) if p <= task_steps}


def empty_matrix(n_tasks):
    """An n_tasks x n_tasks score matrix of None, to be filled row by row (R[i][j], j <= i)."""
    return [[None] * n_tasks for _ in range(n_tasks)]


def trained_rows(R):
    """R without its trailing all-None rows (tasks not trained yet), checked: row i has scores for tasks 0..i."""
    R = list(R)
    while R and all(v is None for v in R[-1]):
        R.pop()
    if not R or any(len(row) < i + 1 for i, row in enumerate(R)):
        raise ValueError("score matrix R must have rows 0..t-1 with row i holding at least i + 1 scores")
    for i, row in enumerate(R):
        if any(not isinstance(row[j], numbers.Real) for j in range(i + 1)):
            raise ValueError(f"score matrix R row {i} has a missing score at or below the diagonal")
    return R


def table1(R, higher_is_better):
    """Table 1: final average score and forgetting over the t tasks trained so far (rows of `trained_rows(R)`)."""
    R = trained_rows(R)
    last = len(R) - 1
    average = float(np.mean([R[last][j] for j in range(last + 1)]))
    sign = 1.0 if higher_is_better else -1.0
    per_task = [sign * (R[j][j] - R[last][j]) for j in range(last)]  # F_j: drop (success) or rise (FID)
    forgetting = float(np.sum(per_task) / (last + 1)) if per_task else None  # mean over all N, F_last = 0 included
    return {"average": average, "forgetting": forgetting, "per_task_forgetting": [float(f) for f in per_task]}


# ----------------------------------------------------------------------------- Table 2: steps to threshold

def meets_target(score, ref, threshold, higher_is_better):
    """SR >= alpha * SR0 (success) or FID <= (1 + tau) * FID0 (FID): Section 4.3."""
    if higher_is_better:
        return score >= threshold * ref
    return score <= (1.0 + threshold) * ref


def reconvergence(curves, transitions, ref, thresholds, higher_is_better, task=0):
    """Steps to re-converge task `task` (0-based; Task 1 by default) after each later transition.

    curves: (global_step, in_task_step, training_task_index, score) evaluations of that one task;
    transitions: global steps at which training tasks 1, 2, ... (0-based) begin, so tasks 0..len(transitions)
    were trained. Returns {str(threshold): {"T<k+1>": first in_task_step during task k meeting the target, or
    None}} for every k in task+1..len(transitions). With a success reference ref <= 0 (the task was never
    learned) every cell is UNDEFINED: "SR >= alpha * 0" holds for any curve and measures nothing.
    """
    if any(b <= a for a, b in zip([0, *transitions], transitions)):
        raise ValueError(f"transitions must be positive and increasing, got {transitions}")
    n_trained = len(transitions) + 1
    by_task = {k: [] for k in range(task + 1, n_trained)}
    for _, in_task_step, k, score in curves:
        if k >= n_trained:
            raise ValueError(f"curve point in training task {k} but only {len(transitions)} transitions given")
        if k in by_task:
            by_task[k].append((in_task_step, score))
    undefined = higher_is_better and ref <= 0  # the task was never learned: every target is met trivially
    table = {}
    for threshold in thresholds:
        row = {}
        for k, points in by_task.items():
            if undefined:
                row[f"T{k + 1}"] = UNDEFINED
                continue
            hits = [s for s, score in sorted(points) if meets_target(score, ref, threshold, higher_is_better)]
            row[f"T{k + 1}"] = int(hits[0]) if hits else None  # the first crossing, even if it is lost again later
        table[str(threshold)] = row
    return table


def aggregate_steps(values):
    """One Table 2 cell over seeds: mean of those that re-converged; "—" if fewer than half did; "(k/n)" if k < n.

    Seeds whose cell is UNDEFINED (task never learned) are left out; "n/a" if every seed's cell is.
    """
    values = [v for v in values if v != UNDEFINED]
    if not values:
        return UNDEFINED
    done = [v for v in values if v is not None]
    if not done or 2 * len(done) < len(values):
        return DASH
    cell = f"{np.mean(done):.0f}"
    return cell if len(done) == len(values) else f"{cell} ({len(done)}/{len(values)})"


def threshold_label(threshold, higher_is_better):
    return f"{threshold * 100:g}%" if higher_is_better else f"+{threshold * 100:g}%"


def table2_markdown(rows, thresholds, higher_is_better, title="Task 1"):
    """Paper Table 2 layout. rows: {label: [reconvergence table per seed]} (one entry = one run)."""
    tasks = sorted({k for tables in rows.values() for t in tables for k in t[str(thresholds[0])]},
                   key=lambda name: int(name[1:]))
    undefined = f"; {UNDEFINED} = undefined, the task's own success was 0" if higher_is_better else ""
    heading = (f"Steps to re-converge {title} (in-task gradient updates after each transition; {DASH} = never"
               f"{undefined})")
    if not tasks:
        return f"{heading}\n\nNo later task has been trained yet.\n"
    header = ["Method"] + [f"{threshold_label(th, higher_is_better)} {k}" for th in thresholds for k in tasks]
    lines = [heading, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, tables in rows.items():
        cells = [aggregate_steps([t[str(th)].get(k) for t in tables]) for th in thresholds for k in tasks]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- Table 1 markdown

def mean_se(values):
    """Mean and standard error std(ddof=1)/sqrt(n); se is None for a single value."""
    values = np.asarray(values, dtype=np.float64)
    se = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
    return float(values.mean()), se


def _pm(values, scale, unit=""):
    values = [v for v in values if v is not None]
    if not values:
        return DASH
    mean, se = mean_se(np.asarray(values) * scale)
    return f"{mean:.1f}{unit} ± {DASH if se is None else f'{se:.1f}'}"


def table1_markdown(rows, score_name, title="", note="", label="FID"):
    """Paper Table 1 for one experiment. rows: {label: [table1 dict per seed]}; success printed in percent."""
    success = score_name == "success"
    scale, unit = (100.0, "%") if success else (1.0, "")
    head = ["Method", "SR ↑" if success else f"A{label} ↓", "F ↓", "seeds"]
    lines = [f"### {title}", ""] if title else []
    lines += [note, ""] if note else []
    lines += ["| " + " | ".join(head) + " |", "|---|---|---|---|"]
    for label, results in rows.items():
        average = _pm([r["average"] for r in results], scale, unit)
        forgetting = _pm([r["forgetting"] for r in results], scale)
        lines.append(f"| {label} | {average} | {forgetting} | {len(results)} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- summary.json

def reference(curve, j, R, transitions):
    """Table 2's initial optimum of task j: its curve's point at the end of its own task j (the same evaluation
    protocol as the curve points it is compared with: sample count, sampler noise), else R[j][j]. Never a
    mid-task point: a --curve list need not name the task's last step."""
    end = transitions[j] if j < len(transitions) else None  # global step at which task j ends
    own = [score for g, _, k, score in curve if k == j and (g == end or end is None)]
    return own[-1] if own else R[j][j]


def build_summary(method, seed, experiment, task_names, R, higher_is_better, curve, transitions, thresholds,
                  extra=None, task_curves=None, provenance=None):
    """The summary.json dict (schema in the module docstring).

    curve: Task-1 evaluations (global_step, in_task_step, training_task_index, score); task_curves: optional
    {j: same for task j} to also fill the Appendix D tables of the other tasks.
    """
    if experiment not in EXPERIMENTS:
        raise ValueError(f"experiment must be one of {EXPERIMENTS}, got {experiment!r}")
    if higher_is_better != (experiment == "cw10"):
        raise ValueError(f"higher_is_better={higher_is_better} does not match experiment {experiment!r}")
    R = trained_rows(R)
    if len(R) > len(task_names):
        raise ValueError(f"R has {len(R)} rows but only {len(task_names)} task names")
    result = table1(R, higher_is_better)
    curves = {0: curve, **{int(j): c for j, c in (task_curves or {}).items()}}
    reconv = {f"T{j + 1}": reconvergence(c, transitions, reference(c, j, R, transitions), thresholds,
                                         higher_is_better, task=j)
              for j, c in sorted(curves.items()) if j < len(R) and c}
    return {
        "schema_version": 1, "method": method, "seed": int(seed), "experiment": experiment,
        "task_names": list(task_names), "n_tasks_trained": len(R),
        "score_name": "success" if higher_is_better else "fid", "higher_is_better": bool(higher_is_better),
        "R": [[None if v is None else float(v) for v in row] + [None] * (len(task_names) - len(row)) for row in R],
        **result, "thresholds": [float(t) for t in thresholds], "reconvergence": reconv,
        "task1_curve": [[int(g), float(s)] for g, _, _, s in curve],
        "transitions": [int(t) for t in transitions], "extra": dict(extra or {}),
        **({"provenance": provenance} if provenance is not None else {}),
    }


def score_label(summary):
    """The score's name in tables and plots: "success rate", or extra["score"] (e.g. the toy's "FD"), else FID or
    FID-proxy (extra["is_proxy"])."""
    if summary["higher_is_better"]:
        return "success rate"
    extra = summary.get("extra", {})
    return extra.get("score") or ("FID-proxy" if extra.get("is_proxy") else "FID")


def write_run_outputs(out, summary, ylabel=None, title="", figure=True):
    """A run's result files: summary.md (summary_markdown), with figure figure2.png (its Task-1 curve; ylabel
    defaults to "Task 1 <score_label>") and r_matrix.png (figures.py), and last summary.json: a folder with a
    summary.json has all of them (a fault in between leaves summary.json as it was; a rerun writes them all)."""
    runfiles.atomic_write_text(os.path.join(out, "summary.md"), summary_markdown(summary))
    runs = {DISPLAY_NAMES.get(summary["method"], summary["method"]): [summary]}
    if figure and summary["task1_curve"]:
        figures.figure2(runs, os.path.join(out, "figure2.png"), ylabel or f"Task 1 {score_label(summary)}", title)
    if figure:
        figures.r_matrix(runs, os.path.join(out, "r_matrix.png"), score_label(summary),
                         f"{EXPERIMENT_TITLES[summary['experiment']]}: score matrix R")
    runfiles.atomic_write_json(os.path.join(out, "summary.json"), summary)


def summary_markdown(summary):
    """One run's summary.json as markdown: the score matrix R, its Table 1 row and Table 2 rows."""
    success = summary["score_name"] == "success"
    scale = 100.0 if success else 1.0
    names = summary["task_names"]
    lines = [f"# {summary['experiment']} / {DISPLAY_NAMES.get(summary['method'], summary['method'])} / "
             f"seed {summary['seed']}", "",
             *([f"Task sequence: {summary['extra']['sequence']}", ""]
               if "sequence" in summary.get("extra", {}) else []),
             f"R[i][j] = {'success rate (%)' if success else 'FID'} of task j after training task i", "",
             "| after \\ task | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for i, row in enumerate(summary["R"]):
        cells = [DASH if v is None else f"{v * scale:.1f}" for v in row]
        lines.append(f"| {names[i]} | " + " | ".join(cells) + " |")
    label = DISPLAY_NAMES.get(summary["method"], summary["method"])
    lines += ["", table1_markdown({label: [summary]}, summary["score_name"], label=score_label(summary))]
    for task, table in summary["reconvergence"].items():
        lines.append(table2_markdown({label: [table]}, summary["thresholds"], summary["higher_is_better"],
                                     title=f"Task {task[1:]}"))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- aggregation CLI

def _summary_problem(s):
    """None if `s` has the summary.json schema (module docstring), else what is wrong with it."""
    if not isinstance(s, dict):
        return "not a JSON object"
    missing = [k for k in SUMMARY_FIELDS + ("R",) if k not in s]
    if missing:
        return f"missing {missing}"
    if s["experiment"] not in EXPERIMENTS or not isinstance(s["method"], str) or type(s["seed"]) is not int:
        return "experiment, method or seed has the wrong type or value"
    names, n = s["task_names"], s["n_tasks_trained"]
    if not isinstance(names, list) or type(n) is not int or not 1 <= n <= len(names):
        return "task_names / n_tasks_trained malformed"
    R = s["R"]
    if not isinstance(R, list) or len(R) != n or any(not isinstance(row, list) or len(row) != len(names) for row in R):
        return f"R must be {n} rows of {len(names)} entries"
    if any(not isinstance(R[i][j], numbers.Real) for i in range(n) for j in range(i + 1)):
        return "R has a missing or non-numeric score at or below the diagonal"
    for key in ("average",) + (("forgetting",) if n > 1 else ()):
        if not isinstance(s[key], numbers.Real):
            return f"{key} is not a number"
    if not isinstance(s["task1_curve"], list) or any(not isinstance(p, list) or len(p) != 2 for p in s["task1_curve"]):
        return "task1_curve must be [[global_step, score], ...]"
    if not isinstance(s["reconvergence"], dict) or not isinstance(s["transitions"], list):
        return "reconvergence or transitions malformed"
    return None


def load_summaries(run_dirs):
    """summary.json of each run dir, grouped {experiment: {method: [summary, ...]}} in the paper's order."""
    groups = {}
    for run_dir in run_dirs:
        path = os.path.join(run_dir, "summary.json")
        if not os.path.isfile(path):
            raise ValueError(f"missing {path}")
        try:
            with open(path, encoding="utf-8") as f:
                s = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path} is not readable JSON ({type(e).__name__}: {e})") from None
        problem = _summary_problem(s)
        if problem:
            raise ValueError(f"{path} is not a summary.json of this project: {problem}")
        n, names = s["n_tasks_trained"], s["task_names"]
        if n < len(names) or s.get("finished") is False:
            raise ValueError(f"{path} is of an unfinished run ({n} of {len(names)} tasks trained): rerun its command "
                             f"to finish it, or leave {run_dir} out")
        scores = [v for row in s["R"] for v in row if v is not None] + [p[1] for p in s["task1_curve"]]
        if not all(math.isfinite(v) for v in scores):
            raise ValueError(f"{path} holds a non-finite score ({next(v for v in scores if not math.isfinite(v))}) "
                             f"in R or its Task 1 curve: the run diverged or the file was changed; leave it out")
        s.update(table1(s["R"], s["higher_is_better"]))  # Table 1 from R: summaries of an older F rule count alike
        groups.setdefault(s["experiment"], {}).setdefault(s["method"], []).append(s)
    keyed = lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), m)  # noqa: E731
    for experiment, by_method in groups.items():
        runs = [s for ss in by_method.values() for s in ss]
        for key in ("task_names", "score_name", "thresholds", "n_tasks_trained", "transitions"):
            if any(s[key] != runs[0][key] for s in runs):
                raise ValueError(f"runs of {experiment!r} disagree on {key!r}: cannot aggregate them")
        for key in COMPARABILITY_EXTRA:
            if any(s.get("extra", {}).get(key) != runs[0].get("extra", {}).get(key) for s in runs):
                raise ValueError(f"runs of {experiment!r} disagree on extra[{key!r}]: cannot aggregate them")
        for method, ss in by_method.items():
            seeds = [s["seed"] for s in ss]
            if len(set(seeds)) != len(seeds):
                raise ValueError(f"{experiment}/{method}: the same seed appears twice ({sorted(seeds)})")
        groups[experiment] = {m: by_method[m] for m in sorted(by_method, key=keyed)}
    return groups


def commits_note(summaries):
    """One line naming the commits the runs were made at ("+dirty": with uncommitted changes), with run counts."""
    count = {}
    for s in summaries:
        starts = s.get("provenance", {}).get("starts") or [{}]
        named = [(p["commit"][:7] if p.get("commit") else "unrecorded") + ("+dirty" if p.get("dirty") else "")
                 for p in starts]
        key = ", ".join(dict.fromkeys(named))
        count[key] = count.get(key, 0) + 1
    return "Made at commit " + "; ".join(f"{k} ({n} run{'s' * (n > 1)})" for k, n in count.items()) + ".\n"


def aggregate(run_dirs, out_dir):
    """Write out_dir/table1.md, out_dir/table2.md, figure2_<experiment>.png and r_matrix_<experiment>.png (figures.py);
    returns the paths."""
    groups = load_summaries(run_dirs)
    name = lambda m: DISPLAY_NAMES.get(m, m)  # noqa: E731
    t1, t2, written = ["# Table 1: final average score and forgetting (mean ± s.e. over seeds)\n"], [], []
    for experiment, by_method in groups.items():
        first = next(iter(by_method.values()))[0]
        hib, thresholds, title = first["higher_is_better"], first["thresholds"], EXPERIMENT_TITLES[experiment]
        extra = first.get("extra", {})
        if extra.get("dataset") not in (None, "imagenet32"):  # a stand-in dataset (e.g. train_imagenet's shapes)
            title += f" [dataset: {extra['dataset']}]"
        if extra.get("sequence") not in (None, "CW10"):  # train_cw10's subsequences (e.g. the small preset's)
            title += f" [{extra['sequence']}]"
        note = (f"FID-proxy (extractor {extra.get('extractor')}): not comparable to published FID."
                if extra.get("is_proxy") else "")
        runs = {name(m): ss for m, ss in by_method.items()}
        t1.append(table1_markdown(runs, first["score_name"], title, note, score_label(first)))
        t2.append(f"# Table 2 ({title})\n")
        evaluated = set.intersection(*[set(s["reconvergence"]) for ss in by_method.values() for s in ss])
        for task in sorted(evaluated, key=lambda n: int(n[1:])):
            rows = {name(m): [s["reconvergence"][task] for s in ss] for m, ss in by_method.items()}
            t2.append(table2_markdown(rows, thresholds, hib, title=f"Task {task[1:]} ({title})"))
        written += [os.path.join(out_dir, f"{kind}_{experiment}.png") for kind in ("figure2", "r_matrix")]
        figures.figure2(runs, written[-2], f"Task 1 {score_label(first)}", f"{title}: Task 1 over continual training")
        figures.r_matrix(runs, written[-1], score_label(first), f"{title}: score matrix R")
    t1.append(commits_note([s for by_method in groups.values() for ss in by_method.values() for s in ss]))
    print(t1[-1], end="")
    runfiles.atomic_write_text(os.path.join(out_dir, "table1.md"), "\n".join(t1))
    runfiles.atomic_write_text(os.path.join(out_dir, "table2.md"), "\n".join(t2))
    return [os.path.join(out_dir, "table1.md"), os.path.join(out_dir, "table2.md"), *written]


def main(argv=None):
    parser = runfiles.Parser(description="Aggregate runs/<name>/summary.json into Table 1, Table 2, Figure 2 and "
                                "the R heatmaps (mean ± standard error over seeds).")
    sub = parser.add_subparsers(dest="command", required=True)
    agg = sub.add_parser("aggregate", help="aggregate run directories")
    agg.add_argument("run_dirs", nargs="+", help="run directories, each holding a summary.json")
    agg.add_argument("--out", required=True, help="output directory")
    args = parser.parse_args(argv)
    try:
        runfiles.require(args.out.strip() != "", "--out must not be empty")
        runfiles.check_writable(args.out, "--out")
        for path in aggregate(args.run_dirs, args.out):
            print(f"wrote {path}")
    except ValueError as e:  # bad input, json.JSONDecodeError included; a full disk is a runfiles.Fault (exit 74)
        parser.error(str(e))


if __name__ == "__main__":
    runfiles.run(main)
