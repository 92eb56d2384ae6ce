"""train_cw10.py with its wall time split into training steps, evaluation rollouts and the rest.

    python results/cw10_single_task_cpu/timed_run.py ARGS...      # ARGS: any train_cw10.py flags (with --out)

Runs train_cw10.main(ARGS) unchanged and writes OUT/timing.json: wall seconds of all training steps
(experiment.train_step), of all evaluation rollouts (cw10_data.run_episodes) and of the whole process, the
number of steps timed and the mean seconds per training step. A resumed run times only what it ran itself.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import cw10_data  # noqa: E402
import experiment  # noqa: E402
import train_cw10  # noqa: E402


SPENT = {"train_s": 0.0, "train_steps": 0, "rollout_s": 0.0}


def timed(fn, key, count=None):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SPENT[key] += time.perf_counter() - start
            if count:
                SPENT[count] += 1
    return wrapper


if __name__ == "__main__":
    argv = sys.argv[1:]
    out = argv[argv.index("--out") + 1]
    experiment.train_step = timed(experiment.train_step, "train_s", "train_steps")
    cw10_data.run_episodes = timed(cw10_data.run_episodes, "rollout_s")
    start = time.perf_counter()
    experiment.run(train_cw10.main, argv)
    SPENT["total_s"] = time.perf_counter() - start
    SPENT["s_per_step"] = SPENT["train_s"] / max(SPENT["train_steps"], 1)
    with open(os.path.join(out, "timing.json"), "w") as f:
        json.dump(SPENT, f, indent=1)
    print("timing:", json.dumps(SPENT))
