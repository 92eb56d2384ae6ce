"""Every fault class of the fault table, measured with the scripts' own command lines on the smoke presets:
`python results/faults/measure.py WORKDIR > results/faults/table.md` (about 10 minutes on two cores). Per case:
the command, the exit code, the one line on stderr, and whether the same command run again leaves summary.json
(without provenance) and metrics.jsonl equal to an uninterrupted run's. The full-disk cases on a real file system
need root (a 1 MiB tmpfs mounted at WORKDIR/full); without it they are skipped and the injected writer
(inject.py) shows the same paths."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
W = os.path.abspath(sys.argv[1])
PY = sys.executable
CW = ["train_cw10.py", "--preset", "smoke", "--threads", "1", "--method", "replay"]
TOY = ["train_toy.py", "--preset", "smoke", "--method", "tr", "--workers", "1"]
ROWS = []


def start(argv, **kw):
    return subprocess.Popen([PY, *argv], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1", **kw.pop("env", {})), **kw)


def call(argv, **kw):
    p = start(argv, **kw)
    err = p.communicate()[1]
    return p.returncode, err


def records_at(folder, g):
    try:
        with open(os.path.join(folder, "metrics.jsonl")) as f:
            return any(json.loads(x).get("global_step", 0) >= g for x in f if x.endswith("}\n"))
    except OSError:
        return False


def wait_for(cond, timeout=300):
    end = time.time() + timeout
    while time.time() < end and not cond():
        time.sleep(0.02)


def result(path):
    with open(path) as f:
        s = json.load(f)
    s.pop("provenance", None)
    return s


def same(folder, ref):
    try:
        equal = result(os.path.join(folder, "summary.json")) == result(os.path.join(ref, "summary.json"))
        with open(os.path.join(folder, "metrics.jsonl")) as a, open(os.path.join(ref, "metrics.jsonl")) as b:
            equal = equal and a.read() == b.read()
    except OSError as e:
        return f"no ({e.strerror})"
    tmp = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs if f.endswith(".tmp")]
    return "identical" if equal and not tmp else f"DIFFERENT{' (tmp files left)' if tmp else ''}"


def row(case, argv, code, err, rerun):
    lines = err.strip().splitlines()
    line = lines[-1] if lines else ""
    extra = "" if len(lines) <= 1 else f" ({len(lines)} lines on stderr)"
    ROWS.append((case, " ".join(argv).replace(W, "$W"), code, line.replace(W, "$W") + extra, rerun))
    print(f"{case}: exit {code}: {line}{extra} | rerun: {rerun}", file=sys.stderr, flush=True)


def rerun_and_compare(argv, folder, ref):
    code, err = call(argv)
    return same(folder, ref) if code == 0 else f"rerun exit {code}: {err.strip()[-200:]}"


def main():
    shutil.rmtree(W, ignore_errors=True)
    os.makedirs(W)
    data = os.path.join(W, "data")
    # uninterrupted references
    refs = {"cw": os.path.join(W, "ref_cw"), "toy": os.path.join(W, "ref_toy"), "cwr": os.path.join(W, "ref_cwr")}
    assert call(CW + ["--out", refs["cw"], "--data-dir", data])[0] == 0
    assert call(CW + ["--out", refs["cwr"], "--data-dir", data, "--replay-rollouts", "40"])[0] == 0
    assert call(TOY + ["--out", refs["toy"]])[0] == 0
    toy_ref = os.path.join(refs["toy"], "tr-s0")

    # 1. a full disk (a real tmpfs), then the writer made to fail at each kind of write
    full = os.path.join(W, "full")
    os.makedirs(full)
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", full], capture_output=True)
    mounted = mount.returncode == 0
    if mounted:
        subprocess.run(["dd", "if=/dev/zero", f"of={full}/filler", "bs=4k"], capture_output=True)
        argv = TOY + ["--out", os.path.join(full, "toy")]
        code, err = call(argv)
        os.remove(os.path.join(full, "filler"))
        row("full disk (tmpfs) at the run's first write", argv, code, err,
            rerun_and_compare(argv, os.path.join(full, "toy", "tr-s0"), toy_ref))
        subprocess.run(["dd", "if=/dev/zero", f"of={full}/filler", "bs=4k"], capture_output=True)
        argv = CW + ["--out", os.path.join(W, "cw_cache"), "--data-dir", os.path.join(full, "data")]
        code, err = call(argv)
        left = os.listdir(os.path.join(full, "data")) if os.path.isdir(os.path.join(full, "data")) else []
        os.remove(os.path.join(full, "filler"))
        row("full disk (tmpfs) writing the demo cache", argv, code, err + ("" if not left else f"\nleft: {left}"),
            rerun_and_compare(argv, os.path.join(W, "cw_cache"), refs["cw"]))
        subprocess.run(["umount", full])
    for name, after in (("checkpoint.pt", 1), ("metrics.jsonl", 3), ("figure2.png", 0), ("task1_paths.png", 0),
                        ("summary.json", 0)):
        out = os.path.join(W, f"disk_{name}")
        argv = CW + ["--out", out, "--data-dir", data]
        code, err = call(["results/faults/inject.py", name, str(after), *argv])
        row(f"full disk writing {name} (injected{f'; {after} such writes succeed first' if after else ''})",
            ["results/faults/inject.py", name, str(after), *argv], code, err, rerun_and_compare(argv, out, refs["cw"]))

    # 2. SIGTERM during training and during rollouts; Ctrl-C
    for case, sig, extra, ref, cond in (
            ("SIGTERM during training", signal.SIGTERM, [], "cw", lambda o: records_at(o, 10)),
            ("Ctrl-C (SIGINT) during training", signal.SIGINT, [], "cw", lambda o: records_at(o, 10)),
            ("SIGTERM during the replay rollouts", signal.SIGTERM, ["--replay-rollouts", "40"], "cwr",
             lambda o: records_at(o, 8) and '"kind": "eval"' in open(os.path.join(o, "metrics.jsonl")).read())):
        out = os.path.join(W, case.split()[0].lower() + "_" + case.split()[-1])
        argv = CW + ["--out", out, "--data-dir", data, *extra]
        p = start(argv, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        wait_for(lambda: cond(out) or p.poll() is not None)
        p.send_signal(sig)
        err = p.communicate()[1]
        row(case, argv + [f"(kill -{signal.Signals(sig).name[3:]})"], p.returncode, err,
            rerun_and_compare(argv, out, refs[ref]))

    # 3. a killed environment worker
    out = os.path.join(W, "worker")
    argv = CW + ["--out", out, "--data-dir", data, "--env-workers", "1"]
    p = start(argv)
    wait_for(lambda: records_at(out, 10) or p.poll() is not None)
    kids = open(f"/proc/{p.pid}/task/{p.pid}/children").read().split()
    workers = [k for k in kids if "resource_tracker" not in open(f"/proc/{k}/cmdline").read()]
    os.kill(int(workers[0]), signal.SIGKILL)
    err = p.communicate()[1]
    row("an environment worker killed (kill -9 of the worker)", argv, p.returncode, err,
        rerun_and_compare(argv, out, refs["cw"]))

    # 4. the toy's pool: kill -9 / SIGTERM of the parent; its workers must end and free the run folders' locks
    for sig in (signal.SIGKILL, signal.SIGTERM):
        out = os.path.join(W, f"pool_{sig.name}")
        argv = ["train_toy.py", "--preset", "smoke", "--method", "finetune,tr", "--workers", "2",
                "--steps-per-task", "600", "--out", out]
        p = start(argv)
        wait_for(lambda: records_at(os.path.join(out, "tr-s0"), 20) or p.poll() is not None)
        kids = [int(k) for k in open(f"/proc/{p.pid}/task/{p.pid}/children").read().split()]
        p.send_signal(sig)
        err = p.communicate()[1]
        time.sleep(2)
        alive = [k for k in kids if os.path.exists(f"/proc/{k}") and
                 open(f"/proc/{k}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"]
        ref = os.path.join(W, "pool_ref")
        if not os.path.exists(ref):
            assert call(argv[:-1] + [ref])[0] == 0
        code, rerr = call(argv)
        same_all = [same(os.path.join(out, m), os.path.join(ref, m)) for m in ("finetune-s0", "tr-s0")]
        row(f"the toy's parent stopped (kill -{sig.name[3:]}) while its pool trains 2 runs", argv, p.returncode, err,
            f"{len(alive)} of {len(kids)} workers alive 2 s later; the rerun: "
            + (f"exit {code}, {rerr.strip()[-200:]}" if code else ", ".join(same_all)))

    # 5. a garbage metrics.jsonl line on resume: nothing changed, the file and line named
    out = os.path.join(W, "garbage")
    argv = TOY + ["--out", out, "--steps-per-task", "12"]
    p = start(argv)
    wait_for(lambda: records_at(os.path.join(out, "tr-s0"), 14) or p.poll() is not None)
    p.send_signal(signal.SIGTERM)
    p.communicate()
    log = os.path.join(out, "tr-s0", "metrics.jsonl")
    lines = open(log).read().splitlines(keepends=True)
    lines[2] = "#garbage\n"
    open(log, "w").write("".join(lines))
    before = {n: open(os.path.join(out, "tr-s0", n), "rb").read() for n in ("config.json", "metrics.jsonl")}
    code, err = call(argv)
    unchanged = before == {n: open(os.path.join(out, "tr-s0", n), "rb").read() for n in before}
    row("a garbage metrics.jsonl line on resume", argv, code, err,
        f"config.json and metrics.jsonl {'unchanged' if unchanged else 'CHANGED'}")

    # 6. checks before the first write; results that cannot be wrong quietly
    short = ["--out", os.path.join(W, "mpl"), "--data-dir", os.path.join(W, "mpl_data"), "--max-path-length", "1"]
    cases = [("--max-path-length 1 (too short for S, O, A)", CW + short),
             ("--compare with a missing run", ["train_cw10.py", "--compare", refs["cw"], os.path.join(W, "none"),
                                               "--out", os.path.join(W, "cmp.png")]),
             ("--compare to an unwritable folder", ["train_cw10.py", "--compare", refs["cw"], "--out",
                                                    os.path.join(refs["cw"], "summary.json", "cmp.png")]),
             ("fid.py --device bogus", ["fid.py", refs["cw"], refs["cw"], "--device", "bogus"]),
             ("metrics.py aggregate --out ''", ["metrics.py", "aggregate", refs["cw"], "--out", ""]),
             ("divergence (--lr 1e6)", CW + ["--out", os.path.join(W, "diverged"), "--data-dir", data, "--lr", "1e6"])]
    for case, argv in cases:
        code, err = call(argv)
        written = [p for p in (os.path.join(W, "mpl"), os.path.join(W, "mpl_data"), os.path.join(W, "cmp.png"),
                               os.path.join(W, "diverged", "summary.json")) if os.path.exists(p)]
        row(case, argv, code, err, "no summary, nothing else written" if not written else f"written: {written}")
    nan = os.path.join(W, "nan")
    shutil.copytree(refs["cw"], nan)
    s = json.load(open(os.path.join(nan, "summary.json")))
    s["R"][1][1], s["seed"] = float("nan"), 1
    json.dump(s, open(os.path.join(nan, "summary.json"), "w"))
    argv = ["metrics.py", "aggregate", refs["cw"], nan, "--out", os.path.join(W, "agg")]
    code, err = call(argv)
    row("aggregate of a summary with a NaN score", argv, code, err,
        "nothing written" if not os.path.exists(os.path.join(W, "agg")) else "written")
    out = os.fsencode(os.path.join(W, "run-")) + b"\xff"
    argv = TOY + ["--out", out]
    p = subprocess.run([PY, *argv], cwd=ROOT, capture_output=True, env=dict(os.environ, PYTHONIOENCODING="utf-8"))
    row("a finished run, --out not UTF-8, PYTHONIOENCODING=utf-8", TOY + ["--out", "$W/run-\\xff"], p.returncode,
        p.stderr.decode("utf-8", "replace"), same(os.fsdecode(os.path.join(out, b"tr-s0")), toy_ref))

    print("| case | command (cwd: the repository; $W: the work folder) | exit | the line on stderr | the rerun |")
    print("|---|---|---|---|---|")
    for case, cmd, code, line, rerun in ROWS:
        print(f"| {case} | `python {cmd}` | {code} | {line.replace('|', '/')} | {rerun} |")


if __name__ == "__main__":
    main()
