"""The planted-bug check: plausible one-line bugs in the math modules and on the experiment side (metrics, the task
boundary and lr schedule, the CW10 windows, rollouts and replay recording, the image sample grids), planted one at a
time in a temporary copy of the working tree; each must make the tests TESTS names for its module fail.

    python tests/planted_bugs.py            # every bug (a few minutes on 2 cores)
    python tests/planted_bugs.py 3 17       # bugs 3 and 17 only

Each bug is (file, exact original text, replacement, what a reader could have written). The original must occur
exactly once in the file: when the code changes, the check stops with an error naming the bug to update, rather
than silently testing nothing. The repository itself is never modified: the tracked and untracked (not ignored)
top-level files and tests/ are copied to a temporary folder, and the tests run there. pytest does not collect this
file (its name does not start with test_). Exit status: 0 when every bug is caught, 1 otherwise, 2 on a stale bug.
"""
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = {"diffusion.py": "tests/test_diffusion.py", "fisher.py": "tests/test_fisher.py",
         "trust_region.py": "tests/test_trust_region.py tests/test_derivation.py",  # Eq. 10's terms: derivation's toys
         "derivation.py": "tests/test_derivation.py", "replay.py": "tests/test_replay.py",
         "meta_baselines.py": "tests/test_meta_baselines.py",
         # the experiment side: the test files (or single tests, to keep the check short) that hold each module
         "metrics.py": "tests/test_metrics.py", "figures.py": "tests/test_figures.py",
         "experiment.py": "tests/test_imagenet.py::test_lr_schedule"
                          " tests/test_cw10.py::test_cosine_lr_schedule_drives_the_optimizer tests/test_toy.py",
         "cw10_data.py": "tests/test_rollout.py tests/test_cw10.py::test_windows_match_plain_loop",
         "train_cw10.py": "tests/test_rollout.py",
         "image_data.py": "tests/test_imagenet.py::test_save_grid_layout"
                          " tests/test_imagenet.py::test_task_grids_keep_the_sampler_noise_and_compare_lines_runs_up",
         "train_imagenet.py": "tests/test_imagenet.py::test_task_grids_keep_the_sampler_noise_and_compare_lines_runs_up"}

BUGS = [
    # diffusion.py: Eq. (1)-(3) and DDIM
    ("diffusion.py", "t = torch.randint(0, sched.num_steps, (B,)", "t = torch.randint(1, sched.num_steps, (B,)",
     "t drawn from 1..T-1 (the paper's 1-based t): step 0 never trained"),
    ("diffusion.py", "t = torch.randint(0, sched.num_steps, (B,)", "t = torch.randint(0, sched.num_steps - 1, (B,)",
     "t drawn from 0..T-2: step 999, where DDIM starts, never trained"),
    ("diffusion.py", "eps = torch.randn(x0.shape,", "eps = torch.rand(x0.shape,", "uniform noise instead of Gaussian"),
    ("diffusion.py", "return ab.sqrt() * x0 + (1.0 - ab).sqrt() * eps", "return ab * x0 + (1.0 - ab) * eps",
     "Eq. (2) without the square roots"),
    ("diffusion.py", "self.alpha_bar = torch.cumprod(self.alphas, dim=0)",
     "self.alpha_bar = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(self.alphas, dim=0)[:-1]])",
     "alpha_bar_t as the product up to t - 1 (off by one)"),
    ("diffusion.py", "out = values.to(like.device)[t.to(like.device)]", "out = values.to(like.device)[t.to(like.device) - 1]",
     "coef gathers values[t - 1] (1-based t)"),
    ("diffusion.py", ".pow(2).flatten(1).mean(dim=1)", ".pow(2).flatten(1).sum(dim=1)",
     "per-sample loss summed over dimensions instead of averaged"),
    ("diffusion.py", "return torch.arange(steps - 1, -1, -1, dtype=torch.long) * ratio",
     "return torch.arange(steps, 0, -1, dtype=torch.long) * ratio", "DDIM timesteps 1000, 980, ..., 20 (off by one step)"),
    ("diffusion.py", "ab_prev = float(sched.alpha_bar[t - ratio]) if t - ratio >= 0 else 1.0",
     "ab_prev = float(sched.alpha_bar[t - ratio + 1]) if t - ratio >= 0 else 1.0", "DDIM's alpha_bar_prev off by one"),
    ("diffusion.py", "x0_hat = x0_hat.clamp(-1.0, 1.0)", "x0_hat = x0_hat", "DDIM without the x0 clip"),
    ("diffusion.py", "math.sqrt(max(1 - ab_prev - sigma ** 2, 0.0))", "math.sqrt(max(1 - ab_prev - sigma, 0.0))",
     "DDIM direction term with sigma_t instead of sigma_t^2"),
    ("diffusion.py", "sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab)) * math.sqrt(1 - ab / ab_prev)",
     "sigma = eta * math.sqrt(1 - ab / ab_prev)", "DDIM Eq. 16's sigma_t without its first factor"),
    ("diffusion.py", 'target = eps if sched.prediction == "epsilon" else x0', "target = eps",
     "--prediction sample still regressing onto eps (the flag changes DDIM only)"),
    ("diffusion.py", "return out, (x_t - math.sqrt(ab) * out) / math.sqrt(1 - ab)",
     "return out, (x_t - math.sqrt(1 - ab) * out) / math.sqrt(ab)", "eps_hat from x0_hat with the roots swapped"),
    # fisher.py: the rank-1 and diagonal Fishers, the sampling protocol
    ("fisher.py", "c_star = (sum_s2 / m) / mu_norm2 ** 2", "c_star = (sum_s2 / m) / mu_norm2",
     "c* divided by ||mu||^2 instead of ||mu||^4"),
    ("fisher.py", "                n += losses.shape[0]", "                n += 1", "mu divided by the number of batches"),
    ("fisher.py", "return self.mu / self.mu_norm2 ** 0.5", "return self.mu / self.mu_norm2", "u = mu / ||mu||^2"),
    ("fisher.py", "return 0.5 * self.c_star * self.proj(theta) ** 2", "return self.c_star * self.proj(theta) ** 2",
     "Eq. (5) penalty without the 1/2"),
    ("fisher.py", "theta.double()) - self.mu_dot_theta_star", "theta.double()) + self.mu_dot_theta_star",
     "mu^T (theta + theta*): sign of the anchor"),
    ("fisher.py", "        with _eval_mode(model):\n            # pass 1", "        with torch.enable_grad():\n            # pass 1",
     "rank-1 estimate in the caller's (train) mode"),
    ("fisher.py", "        with _eval_mode(model):\n            acc, n = None, 0",
     "        with torch.enable_grad():\n            acc, n = None, 0", "diagonal Fisher in the caller's (train) mode"),
    ("fisher.py", ".double().pow(2).sum(0) for x in g]", ".double().sum(0).pow(2) for x in g]",
     "diagonal Fisher: square of the summed gradients instead of the sum of squares"),
    ("fisher.py", "idx = torch.randperm(n_available, generator=index_gen)[:n_samples]",
     "idx = torch.arange(n_available)[:n_samples]", "the first n_samples items of the task (one class if sorted)"),
    ("fisher.py", "for start in range(0, len(idx), batch_size):", "for start in range(0, len(idx) - batch_size, batch_size):",
     "the last batch of Fisher items dropped"),
    ("fisher.py", "lo <= r[0] < hi", "lo < r[0] <= hi", "diagnostic bands (lo, hi] instead of [lo, hi)"),
    ("fisher.py", "d / (sq ** 0.5 + 1e-300)", "d / (sq + 1e-300)", "mean_cos divided by ||g_i||^2"),
    # trust_region.py: Eq. (6), (8)-(10), the training step; derivation.py: Section 3.3 on toys
    ("trust_region.py", "(max_norm / (norm + 1e-6)).clamp(max=1.0)", "(max_norm / (norm + 1e-6))",
     "gradient clipping without the clamp: small gradients scaled up"),
    ("trust_region.py", "torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))",
     "torch.stack(torch._foreach_norm(grads)).sum()", "total gradient norm as the sum of the per-tensor norms"),
    ("trust_region.py", "w = (lam * self.c_star * proj).to(self.M.dtype)", "w = (lam * proj).to(self.M.dtype)",
     "term (C) without c*"),
    ("trust_region.py", "return sum((M_p @ d.reshape(-1)).double() for M_p, d in zip(self.blocks, diffs)) + self.offset",
     "return sum((M_p @ d.reshape(-1)).double() for M_p, d in zip(self.blocks, diffs)) - self.offset",
     "anchor offset subtracted instead of added"),
    ("trust_region.py", "return float(sum(2 * F.penalty(theta) for F in fishers))",
     "return float(sum(F.penalty(theta) for F in fishers))", "Eq. (6) value as the penalty (factor 2 missing)"),
    ("trust_region.py", "            torch._foreach_add_([p.grad for p in self.params], C)",
     "            torch._foreach_sub_([p.grad for p in self.params], C)", "term (C) subtracted in the step"),
    ("trust_region.py", "return err[: len(cur[0])].mean(), err[len(cur[0]):].mean()",
     "return err[: len(rep[0])].mean(), err[len(rep[0]):].mean()", "the joint call split at the replay batch's size"),
    ("trust_region.py", "x_t, t, cond, target = (None if a is None else torch.cat([a, b]) for a, b in zip(cur, rep))",
     "x_t, t, cond, target = (None if a is None else torch.cat([a, a]) for a, b in zip(cur, cur))",
     "the joint call given the current batch twice"),
    ("trust_region.py", "th_adapted = (th - alpha * g_tr)", "th_adapted = (th + alpha * g_tr)",
     "MAML inner step going uphill"),
    ("derivation.py", "@ evecs[:, -1])", "@ evecs[:, 0])", "cos(u, v) with the smallest eigenvalue's eigenvector"),
    ("derivation.py", "@ evecs[:, -1])", "@ evecs[-1])", "cos(u, v) with a row of eigh's matrix, not an eigenvector"),
    # replay.py: the pool and the replay losses
    ("replay.py", "cs.append(self.cond[task_id][idx.to(self.storage_device)])",
     "cs.append(self.cond[task_id][torch.randint(self.cond[task_id].shape[0], (count,), generator=generator)])",
     "conditions drawn independently of the samples (pairs broken)"),
    ("replay.py", "idx = torch.randint(self.x0[task_id].shape[0], (count,)",
     "idx = torch.randint(self.x0[task_id].shape[0] - 1, (count,)", "the last stored sample never replayed"),
    ("replay.py", "extra = torch.randperm(k, generator=generator)[: batch_size % k]",
     "extra = torch.arange(k)[: batch_size % k]", "leftover slots always to the first tasks"),
    ("replay.py", "target = teacher(x_t, t, cond)", "target = teacher(x_t, t.flip(0), cond)",
     "the teacher asked at other samples' timesteps than the student"),
    ("replay.py", "return task_id * classes_per_task + torch.arange(n) % classes_per_task",
     "return task_id + torch.arange(n) % classes_per_task", "task k's labels start at k, not k * C"),
    # meta_baselines.py: FTML and VR-MCL
    ("meta_baselines.py", "query = tuple(None if x is None else x[1::2] for x in batch)",
     "query = tuple(None if x is None else x[0::2] for x in batch)", "query = support"),
    ("meta_baselines.py", "p - inner_lr * g for n, p, g", "p + inner_lr * g for n, p, g", "inner SGD step uphill"),
    ("meta_baselines.py", "return loss_cur + beta * loss_replay, loss_cur, loss_replay",
     "return loss_cur + loss_replay, loss_cur, loss_replay", "replay weight beta ignored"),
    ("meta_baselines.py", "leaves, create_graph=second_order", "leaves, create_graph=False",
     "second order silently first order"),
    ("meta_baselines.py", "generator.set_state(rng_state)  #", "generator.get_state()  #",
     "VR-MCL's previous iterate with fresh noise (generator not rewound)"),
    ("meta_baselines.py", "g + self.r * (m_old - g_old)", "g + self.r * (g_old - m_old)", "STORM correction sign"),
    ("meta_baselines.py", "current = [p.detach().clone() for p in self.named.values()]",
     "current = [p.detach() for p in self.named.values()]",
     "theta_{b-1} kept as a view of the live parameters (no clone): Adam moves it too"),
    # metrics.py: Table 1 (average, forgetting), standard errors, Table 2 (targets, crossings, cells, reference)
    ("metrics.py", "per_task = [sign * (R[j][j] - R[last][j]) for j in range(last)]",
     "per_task = [sign * (R[j][j] - R[last][j]) for j in range(last + 1)]",
     "forgetting averaged over all t tasks, the last task's zero included"),
    ("metrics.py", "average = float(np.mean([R[last][j] for j in range(last + 1)]))",
     "average = float(np.mean([R[j][j] for j in range(last + 1)]))",
     "final average taken on the diagonal (each task just after it), not the last row"),
    ("metrics.py", "sign = 1.0 if higher_is_better else -1.0", "sign = 1.0",
     "FID forgetting with success's sign (a rise in FID counted as an improvement)"),
    ("metrics.py", "se = float(values.std(ddof=1) / math.sqrt(len(values)))",
     "se = float(values.std(ddof=0) / math.sqrt(len(values)))", "standard error from the population std (ddof 0)"),
    ("figures.py", "se = ys.std(axis=0, ddof=1) / math.sqrt(len(curves))", "se = ys.std(axis=0, ddof=1)",
     "Figure 2's bands: the standard deviation, not the standard error"),
    ("metrics.py", "return score >= threshold * ref", "return score > threshold * ref",
     "success target met only strictly above alpha * SR0"),
    ("metrics.py", "return score <= (1.0 + threshold) * ref", "return score <= threshold * ref",
     "FID target tau * FID0 instead of (1 + tau) * FID0"),
    ("metrics.py", "int(hits[0]) if hits else None", "int(hits[-1]) if hits else None",
     "Table 2: the last crossing of the target instead of the first"),
    ("metrics.py", "if not done or 2 * len(done) < len(values):", "if not done or 2 * len(done) <= len(values):",
     "Table 2 cell: a dash when exactly half of the seeds re-converged"),
    ("metrics.py", "own = [score for g, _, k, score in curve if k == j and (g == end or end is None)]",
     "own = [score for g, _, k, score in curve if k == j]",
     "Table 2's reference: task j's last curve point in its own task, even a mid-task one"),
    # experiment.py: the lr schedule and the task boundary
    ("experiment.py", "warm = min(1.0, (step + 1) / max(cfg.lr_warmup, 1))",
     "warm = min(1.0, step / max(cfg.lr_warmup, 1))", "warm-up from 0: every task's first step at lr 0"),
    ("experiment.py", "(1 + math.cos(math.pi * step / task_steps)) / 2",
     "(1 + math.cos(math.pi * (step + 1) / task_steps)) / 2", "cosine one step ahead: the last step at lr 0"),
    ("experiment.py", "return cfg.lr * warm * (1 + math.cos(", "return cfg.lr * (1 + math.cos(", "warm-up ignored"),
    ("experiment.py", 'group["lr"] = lr_at(cfg, step, task_steps)', 'group["lr"] = lr_at(cfg, step + 1, task_steps)',
     "the optimizer given the next step's lr"),
    ("experiment.py", 'state["transitions"].append(state["global_step"])',
     'state["transitions"].append(state["global_step"] + 1)', "the next task recorded as starting one step late"),
    ("experiment.py", "    if cfg.reset_optimizer:\n        reset_optimizer(learner)", "    reset_optimizer(learner)",
     "Adam's moments cleared at every boundary, --no-reset-optimizer ignored"),
    # cw10_data.py: the training windows and the rollouts
    ("cw10_data.py", "self.obs[e[:, None], t[:, : self.O]]", "self.obs[e[:, None], t[:, -self.O:]]",
     "a training window's cond from its last O frames instead of its first"),
    ("cw10_data.py", "    return T - S + A + O - 1", "    return T - S + O",
     "no end padding: the last A - 1 window starts of each episode dropped"),
    ("cw10_data.py", "chunk = x0[:, O - 1: O - 1 + A]", "chunk = x0[:, 0: A]",
     "rollout executes actions[0:A] instead of [O-1:O-1+A] (O - 1 steps behind the training window)"),
    ("cw10_data.py", "history = np.concatenate([history[:, 1:], obs[:, None]], axis=1)",
     "history = np.concatenate([obs[:, None], history[:, :-1]], axis=1)",
     "rollout history kept newest first (training windows are oldest first)"),
    ("cw10_data.py", "history = np.repeat(obs[:, None], O, axis=1)",
     "history = np.concatenate([np.zeros((n, O - 1, obs.shape[1])), obs[:, None]], axis=1)",
     "rollout history padded with zeros at reset instead of the first observation"),
    ("cw10_data.py", "        for obs in obs_seq:\n", "        for obs in obs_seq[-1:]:\n",
     "rollout history takes only the last observation of each executed chunk"),
    ("cw10_data.py", "envs.step(chunk[:, : T - t0], stop_on_success=not record)",
     "envs.step(chunk, stop_on_success=not record)", "the last chunk not cut at the episode's end"),
    ("cw10_data.py", "envs.step(chunk[:, : T - t0], stop_on_success=not record)",
     "envs.step(chunk[:, : T - t0], stop_on_success=True)",
     "recording rollouts stop stepping succeeded episodes: their later windows are frozen observations"),
    ("cw10_data.py", "task, start, m)", "task, 0, m)", "every batch of rollouts on the same episodes"),
    # train_cw10.py: the replay pool recorded from the teacher's rollouts
    ("train_cw10.py", "pool.add(k, x0[:, keep].flatten(0, 1), cond[:, keep].flatten(0, 1))",
     "pool.add(k, x0[:, keep].flatten(0, 1), cond[:, keep].transpose(0, 1).flatten(0, 1))",
     "replay pairs broken: cond flattened re-plan-major, x0 episode-major"),
    ("train_cw10.py", "cw10_data.EPISODES_REPLAY, g, envs", "cw10_data.EPISODES_EVAL, g, envs",
     "the teacher rolled out on the evaluation episodes"),
    ("train_cw10.py",
     "keep = torch.linspace(0, cond.shape[1] - 1, min(cfg.replay_windows, cond.shape[1])).round().long()",
     "keep = torch.arange(min(cfg.replay_windows, cond.shape[1]))",
     "replay keeps each rollout's first windows only (the episode's start), not evenly spaced ones"),
    # image_data.py, train_imagenet.py: the sample grids
    ("image_data.py", 'f"after{i + 1}": np.stack(m)', 'f"after{i}": np.stack(m)', "samples.npz keys counted from 0"),
    ("image_data.py", "max(2, 64 // size)", "max(1, 32 // size)", "grid images upscaled to 32 px, not 64"),
    ("train_imagenet.py", "image_data.to_uint8(x[:min(self.cfg.classes_per_task, GRID_CLASSES)])",
     "image_data.to_uint8(x[:GRID_CLASSES])",
     "grid of the first 10 samples whatever the task's classes (classes repeated)"),
]


def copy_tree(dest: Path) -> None:
    """The working tree's top-level files and tests/ (tracked or untracked, not ignored), as they are now."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split("\n")
    for name in files:
        if name and (("/" not in name) or name.startswith("tests/")) and (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)


def run_tests(tree: Path, test_file: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *test_file.split()],
                          cwd=tree, capture_output=True, text=True)


def main(argv) -> int:
    chosen = [int(a) for a in argv] or list(range(1, len(BUGS) + 1))
    stale = [i for i, (f, old, _, _) in enumerate(BUGS, 1) if (ROOT / f).read_text().count(old) != 1]
    for i in stale:
        print(f"error: bug {i}: the original text of {BUGS[i - 1][0]} does not occur exactly once: "
              f"{BUGS[i - 1][1]!r}; update BUGS", file=sys.stderr)
    if stale:
        return 2
    with tempfile.TemporaryDirectory(prefix="planted_bugs_") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        for f in sorted({BUGS[i - 1][0] for i in chosen}):     # the tests pass on the unmodified copy
            out = run_tests(tree, TESTS[f])
            if out.returncode != 0:
                print(f"error: {TESTS[f]} fails without a planted bug:\n{out.stdout[-2000:]}", file=sys.stderr)
                return 2
        caught = 0
        for i in chosen:
            f, old, new, what = BUGS[i - 1]
            original = (tree / f).read_text()
            (tree / f).write_text(original.replace(old, new))
            start = time.perf_counter()
            out = run_tests(tree, TESTS[f])
            (tree / f).write_text(original)
            failed = [line.split(" ")[1] for line in out.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
            caught += out.returncode != 0
            print(f"{i:2d} {'caught    ' if out.returncode else 'NOT CAUGHT'} {f}: {what} "
                  f"({time.perf_counter() - start:.0f} s{'; ' + failed[0] if failed else ''})", flush=True)
    print(f"{caught} of {len(chosen)} planted bugs caught")
    return 0 if caught == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
