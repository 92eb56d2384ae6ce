"""Shared test helpers: the repository root on sys.path, and stopping a running experiment mid-run."""
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def result(path) -> dict:
    """A summary.json without its "provenance" block (commit, host, start times, wall times): what two runs of the
    same command must agree on, however often either was stopped and resumed."""
    with open(path, encoding="utf-8") as f:
        summary = json.load(f)
    assert "provenance" in summary, path
    summary.pop("provenance")
    return summary


def default_sigint() -> None:
    """preexec_fn for runs the tests stop with SIGINT: a process started in the background by a non-interactive
    shell (nohup, setsid, `&`) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop_at(proc, log_path, global_step: int, sig) -> str:
    """Wait until the run of `proc` logged a record at `global_step` or later in metrics.jsonl, send `sig`, and
    return its stderr. Fails if the run finished first (then the test would not test a resume)."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(log_path):
            with open(log_path) as f:
                if any(json.loads(line).get("global_step", 0) >= global_step for line in f if line.endswith("}\n")):
                    break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be stopped"
    proc.send_signal(sig)
    return proc.communicate(timeout=60)[1]


def holds_weight_average(ckpt: dict, model) -> bool:
    """Whether a checkpoint's model weights are its learner's weight average (--ema), parameter by parameter;
    `model` (built from the run's config) names the parameters in the average's order."""
    import torch
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    avg = ckpt["learner"]["avg"]
    return len(names) == len(avg) and all(torch.equal(ckpt["model"][n], a) for n, a in zip(names, avg))


def record_schedules(monkeypatch) -> list:
    """Replace diffusion.Schedule by a subclass that appends the prediction type of every schedule built to the
    returned list: an in-process run then shows which parameterisation it trained and sampled with."""
    import diffusion
    made = []

    class Recording(diffusion.Schedule):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self.prediction)

    monkeypatch.setattr(diffusion, "Schedule", Recording)
    return made


def adam_steps(checkpoint_path, method: str) -> set:
    """The step counts in a checkpoint's Adam state, one per parameter (VR-MCL keeps its optimizer as "optimizer")."""
    import torch
    ck = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    return {float(s["step"]) for s in ck["learner"]["optimizer" if method == "vrmcl" else "opt"]["state"].values()}
