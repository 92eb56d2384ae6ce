"""Eq. (9) term norms and the task-boundary Fisher diagnostics of runs (either experiment), as markdown tables.

    python results/terms.py results/cw10_medium_cpu/runs/tr-s? > results/cw10_medium_cpu/terms.md
    python results/terms.py results/imagenet_small_cpu/runs/tr-s? > results/imagenet_small_cpu/terms.md

Per run and task (from metrics.jsonl): the median over the task's "train" records of ||A|| (current task),
||B|| (replay), ||C|| (trust-region term), ||C|| / ||A|| and the Eq. (6) value; then per finished task the Fisher
record: rho, c*, ||mu|| = sqrt(rho / c*), and the rank-1 share and mean cos(g_i, mu), overall and per t band.
"""
import json
import os
import sys

import numpy as np


def load(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def med(records, key):
    values = [r[key] for r in records if key in r]
    return float(np.median(values)) if values else None


def fmt(v, spec=".3g"):
    return "—" if v is None else format(v, spec)


def main(runs):
    if not runs:
        print("error: give run folders (RUN/metrics.jsonl, RUN/config.json, RUN/summary.json)", file=sys.stderr)
        raise SystemExit(2)
    for run in runs:
        records, cfg = load(run), json.load(open(os.path.join(run, "config.json")))
        with open(os.path.join(run, "summary.json")) as f:
            tasks = json.load(f)["task_names"]
        print(f"\n{run}: method {cfg['method']}, lambda {cfg['lam']}, model {cfg['model']}, "
              f"batch {cfg['batch_size']}\n")
        print("| task | ‖A‖ | ‖B‖ | ‖C‖ | ‖C‖/‖A‖ | Eq. 6 value |")
        print("|---|---|---|---|---|---|")
        for k, name in enumerate(tasks):
            train = [r for r in records if r["kind"] == "train" and r["task"] == k]
            ratio = [r["norm_C"] / r["norm_A"] for r in train if "norm_C" in r and r.get("norm_A")]
            print(f"| {k + 1} {name} | {fmt(med(train, 'norm_A'))} | {fmt(med(train, 'norm_B'))} | "
                  f"{fmt(med(train, 'norm_C'))} | {fmt(float(np.median(ratio)) if ratio else None)} | "
                  f"{fmt(med(train, 'trust_region'))} |")
        fishers = [r for r in records if r["kind"] == "fisher"]
        if not fishers:
            continue
        bands = ["0-250", "250-500", "500-750", "750-1000"]
        print("\n| task | rho | c* | ‖mu‖ | rank-1 share | mean cos | " + " | ".join(f"share t {b}" for b in bands)
              + " | " + " | ".join(f"cos t {b}" for b in bands) + " |")
        print("|---|---|---|---|---|---|" + "---|" * (2 * len(bands)))
        for r in fishers:
            d = r.get("diagnostics", {})
            b = d.get("bands", {})
            print(f"| {r['task'] + 1} {tasks[r['task']]} | {r['rho']:.3g} | {r['c_star']:.3g} | "
                  f"{r.get('mu_norm', (r['rho'] / r['c_star']) ** 0.5):.3g} | {fmt(d.get('rank1_share'), '.2f')} | "
                  f"{fmt(d.get('mean_cos'), '.2f')} | "
                  + " | ".join(fmt(b.get(x, {}).get("rank1_share"), ".2f") for x in bands) + " | "
                  + " | ".join(fmt(b.get(x, {}).get("mean_cos"), ".2f") for x in bands) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
