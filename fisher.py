"""The explicit rank-1 Fisher of Wang et al. (2026), and the diagonal Fisher of classic EWC.

Paper Section 3.2 (Eq. 5-6: EWC as a trust region), Eq. (12) (Fisher = expected Hessian) and
Appendix B, Eq. (22) (a rank-1 F squares to a multiple of itself). The estimate follows the authors' code
(Wang et al. 2026, arXiv 2509.23593; Teachable-AI-Lab/diffusion-continual-learning, `src/parameter_scoring.py`,
`compute_rank1_coeff_and_mean`).

Notation (P = number of trainable parameters, N = number of samples)
    l_i        per-sample diffusion loss (Eq. 3) with its own t ~ U{0..999} and eps
    g_i        = grad_theta l_i                                     (P,)
    mu         = (1/N) sum_i g_i, the mean gradient (not normalised)   (P,)
    F_emp      = (1/N) sum_i g_i g_i^T, the empirical Fisher (Eq. 12)
    c*         = argmin_c ||F_emp - c mu mu^T||_F = mean_i (mu^T g_i)^2 / ||mu||^4
    u, rho     u = mu / ||mu||,  rho = c* ||mu||^2 = mean_i (u^T g_i)^2 = u^T F_emp u
    F          = c* mu mu^T = rho u u^T                              (rank-1 Fisher)
    penalty    0.5 (theta - theta*)^T F (theta - theta*) = 0.5 c* (mu^T (theta - theta*))^2   (Eq. 5)
    grad       F (theta - theta*) = rho u u^T (theta - theta*)                                   (Eq. 9 (C) / lambda)

Efficient forms used here (each checked against the plain form in tests/test_fisher.py)
1. No copy of theta*: mu^T (theta - theta*) = mu^T theta - s*, with the scalar s* = mu^T theta*
   fixed at the end of the task. A past task costs one P-vector (mu) and two scalars.
2. Batched estimation. Pass 1: sum_i g_i = grad of sum_i l_i, one backward per batch.
   Pass 2: mu^T g_i is the directional derivative of l_i along mu, so ONE forward-mode JVP of the
   loss vector (l_1..l_B) with tangent mu gives all B scalars at once (torch.func.jvp), with the
   same t and eps as the sample's draw. The authors loop one sample at a time (batch-1 backward per
   sample); `Rank1Fisher.estimate_loop` keeps that plain form as the reference.
3. float64 accumulation for mu and for sum_i (mu^T g_i)^2; mu^T theta is taken in float64.

Diagnostics (on the first `diag_samples` samples of a third fresh draw, one backward each), overall and
per diffusion-step band t in [0, 250), [250, 500), [500, 750), [750, 1000):
    rank1_share = mean_i (u^T g_i)^2 / mean_i ||g_i||^2 = u^T F_emp u / tr F_emp  (1 if F_emp is rank-1)
    mean_cos    = mean_i cos(g_i, mu)

The sampling protocol (`estimate_on_task`, the one all experiments call): N real training items of the
finished task chosen once; both passes over the same items with fresh t and eps; model in eval mode.

DiagonalFisher: classic EWC (Kirkpatrick et al. 2017), F ~ diag(mean_i g_i^2), which the paper argues is
weak for diffusion models (Section 3.2); the experiments run it with `--fisher diag` as a comparison.

Deviations from the paper
- The paper does not say which samples or timesteps the Fisher uses; we follow the authors' code
  (`compute_rank1_coeff_and_mean`): the task's real training data, t ~ U{0..999} over all timesteps, fresh t and
  eps in each pass, model in eval mode.
- Batched estimation instead of the authors' per-sample loop: same estimator, same numbers
  (tests: <= 1e-6 relative in float64), not the same random draws unless the batches carry t and eps.
"""
from __future__ import annotations

import torch
from torch.func import functional_call, jvp, grad as func_grad, vmap
from tqdm.auto import tqdm

import diffusion

# -----------------------------------------------------------------------------
# helpers: flat parameter vectors


def params_list(model: torch.nn.Module) -> list[torch.Tensor]:
    """The trainable parameters, in named_parameters() order (the order of every flat vector)."""
    return [p for p in model.parameters() if p.requires_grad]


def flat_params(model: torch.nn.Module) -> torch.Tensor:
    """theta as one detached (P,) vector."""
    return torch.cat([p.detach().reshape(-1) for p in params_list(model)])


def flatten(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vec: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """(P,) -> list of tensors shaped (and typed) like `like`."""
    out, i = [], 0
    for p in like:
        out.append(vec[i:i + p.numel()].view_as(p).to(p.dtype))
        i += p.numel()
    return out


def _batch_size(batch) -> int:
    for v in batch:
        if torch.is_tensor(v):
            return v.shape[0]
    raise ValueError("a batch must contain at least one tensor")


def _take(batch, i: int):
    """Sample i of a batch tuple, kept as a batch of one."""
    return tuple(v[i:i + 1] if torch.is_tensor(v) else v for v in batch)


def _checked(losses: torch.Tensor, batch) -> torch.Tensor:
    B = _batch_size(batch)
    if losses.dim() != 1 or losses.shape[0] != B:
        raise ValueError(f"per_sample_loss must return a ({B},) vector of per-sample losses, "
                         f"got shape {tuple(losses.shape)}")
    return losses


def _passes(batches, k: int):
    """The batches of pass k: `batches(k)` if callable (fresh noise per pass), else `batches` itself."""
    it = batches(k) if callable(batches) else batches
    if k > 0 and not callable(batches) and iter(it) is it:
        raise ValueError("batches is a one-shot iterator but the estimate needs two passes: "
                         "pass a list, or a callable pass_index -> iterable")
    return it


class _eval_mode:
    """Context manager: model.eval() inside, previous mode restored after."""

    def __init__(self, model):
        self.model, self.was = model, model.training

    def __enter__(self):
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was)


def _functional(model, names, tensors):
    """A callable with model's signature that runs model with the given parameter tensors."""
    params = dict(zip(names, tensors))
    return lambda *a, **k: functional_call(model, params, a, k)

# -----------------------------------------------------------------------------
# rank-1 Fisher


class Rank1Fisher:
    """F = c* mu mu^T = rho u u^T around theta*, stored as (mu, c*, s* = mu^T theta*)."""

    def __init__(self, mu: torch.Tensor, c_star: float, mu_dot_theta_star: float, n_samples: int = 0,
                 diagnostics: dict | None = None):
        self.mu = mu.detach()                                   # (P,)
        self.c_star = float(c_star)
        self.mu_dot_theta_star = float(mu_dot_theta_star)       # s* = mu^T theta*
        self.n_samples = int(n_samples)
        self.diagnostics = dict(diagnostics or {})
        self.mu_norm2 = float(torch.dot(self.mu.double(), self.mu.double()))  # ||mu||^2

    # --- the quantities of Appendix B ---
    @property
    def rho(self) -> float:
        """The only nonzero eigenvalue of F: rho = c* ||mu||^2."""
        return self.c_star * self.mu_norm2

    @property
    def u(self) -> torch.Tensor:
        """Unit eigenvector u = mu / ||mu||, (P,)."""
        return self.mu / self.mu_norm2 ** 0.5

    def proj(self, theta: torch.Tensor) -> torch.Tensor:
        """mu^T (theta - theta*) = mu^T theta - s*, in float64 (a 0-d tensor)."""
        return torch.dot(self.mu.double(), theta.double()) - self.mu_dot_theta_star

    def penalty(self, theta: torch.Tensor) -> torch.Tensor:
        """0.5 (theta - theta*)^T F (theta - theta*) = 0.5 c* (mu^T (theta - theta*))^2, Eq. (5) summand."""
        return 0.5 * self.c_star * self.proj(theta) ** 2

    def grad(self, theta: torch.Tensor) -> torch.Tensor:
        """F (theta - theta*) = rho u u^T (theta - theta*) = c* mu (mu^T (theta - theta*)), (P,)."""
        return (self.c_star * self.proj(theta)).to(self.mu.dtype) * self.mu

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """F v = c* mu (mu^T v), (P,)."""
        return (self.c_star * torch.dot(self.mu.double(), v.double())).to(self.mu.dtype) * self.mu

    def dense(self) -> torch.Tensor:
        """F as a (P, P) matrix, for tests on toy models only."""
        mu = self.mu.double()
        return self.c_star * torch.outer(mu, mu)

    def scalars(self) -> dict:
        """What the training scripts check for finiteness and log at a task boundary."""
        return {"rho": self.rho, "c_star": self.c_star, "mu_norm": self.mu_norm2 ** 0.5}

    # --- device and checkpointing ---
    def to(self, device) -> "Rank1Fisher":
        self.mu = self.mu.to(device)
        return self

    def state_dict(self) -> dict:
        return {"kind": "rank1", "mu": self.mu, "c_star": self.c_star, "mu_dot_theta_star": self.mu_dot_theta_star,
                "n_samples": self.n_samples, "diagnostics": self.diagnostics}

    @classmethod
    def from_state_dict(cls, sd: dict) -> "Rank1Fisher":
        return cls(sd["mu"], sd["c_star"], sd["mu_dot_theta_star"], sd["n_samples"], sd["diagnostics"])

    # --- estimation ---
    @classmethod
    def estimate(cls, model, per_sample_loss, batches, progress: bool = False, diag_samples: int = 64,
                 store_dtype=torch.float32) -> "Rank1Fisher":
        """Two-pass batched estimate at theta* = the model's current parameters.

        per_sample_loss(model, batch) -> (B,), called with model or a functional stand-in; it must be a
        deterministic function of the parameters for a given batch (pre-draw t and eps with
        diffusion.with_noise). batches: a list (both passes reuse it) or a callable
        pass_index -> iterable of batches (fresh noise in each pass, as the authors do).
        """
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        plist = params_list(model)
        with _eval_mode(model):
            # pass 1: mu = (1/N) sum_i g_i, one backward of the summed loss per batch
            mu, n = None, 0
            for batch in tqdm(_passes(batches, 0), desc="Fisher pass 1 (mu)", leave=False, disable=not progress):
                losses = _checked(per_sample_loss(model, batch), batch)
                g = flatten(torch.autograd.grad(losses.sum(), plist)).double()  # sum_i g_i
                mu = g if mu is None else mu + g
                n += losses.shape[0]
            if n == 0:
                raise ValueError("batches yielded no samples")
            mu = mu / n
            # pass 2: s_i = mu^T g_i for the whole batch with one forward-mode JVP along mu
            tangents = tuple(unflatten(mu, plist))
            sum_s2, m = 0.0, 0
            for batch in tqdm(_passes(batches, 1), desc="Fisher pass 2 (c*)", leave=False, disable=not progress):
                def loss_of(*ps, batch=batch):
                    return per_sample_loss(_functional(model, names, ps), batch)
                primals = tuple(p.detach() for p in plist)           # detached: no backward graph is built
                with torch.no_grad():                                # forward-mode AD ignores no_grad
                    _, s = jvp(loss_of, primals, tangents)                         # (B,) = mu^T g_i
                s = _checked(s, batch).detach().double()
                sum_s2 += float((s ** 2).sum())
                m += s.shape[0]
            diag = _diagnostics(model, per_sample_loss, _passes(batches, 2), mu, diag_samples)
        mu_norm2 = float(mu @ mu)
        if mu_norm2 == 0.0:
            raise ValueError("the mean gradient mu is exactly zero; the rank-1 Fisher is undefined")
        c_star = (sum_s2 / m) / mu_norm2 ** 2                       # c* = mean_i (mu^T g_i)^2 / ||mu||^4
        theta_star = flat_params(model).double()
        diag["n_pass2"] = m
        return cls(mu.to(store_dtype), c_star, float(mu @ theta_star), n, diag)

    @classmethod
    def estimate_loop(cls, model, per_sample_loss, batches, store_dtype=torch.float64) -> "Rank1Fisher":
        """Plain reference: one backward per sample (the authors' loop). Same estimator as `estimate`."""
        plist = params_list(model)
        with _eval_mode(model):
            mu, n = 0.0, 0
            for batch in _passes(batches, 0):
                for i in range(_batch_size(batch)):
                    li = _checked(per_sample_loss(model, _take(batch, i)), _take(batch, i))
                    mu = mu + flatten(torch.autograd.grad(li.sum(), plist)).double()  # running sum of g_i
                    n += 1
            mu = mu / n                                                             # mu = mean_i g_i
            s2 = []
            for batch in _passes(batches, 1):
                for i in range(_batch_size(batch)):
                    li = per_sample_loss(model, _take(batch, i))
                    gi = flatten(torch.autograd.grad(li.sum(), plist)).double()
                    s2.append(float(mu @ gi) ** 2)                                  # (mu^T g_i)^2
        c_star = (sum(s2) / len(s2)) / float(mu @ mu) ** 2
        return cls(mu.to(store_dtype), c_star, float(mu @ flat_params(model).double()), n)


T_BANDS = ((0, 250), (250, 500), (500, 750), (750, 1000))  # diffusion-step bands of the diagnostics


def _diagnostics(model, per_sample_loss, batches, mu, limit: int) -> dict:
    """rank1_share = mean (u^T g_i)^2 / mean ||g_i||^2 and mean cos(g_i, mu) on the first `limit` samples,
    overall and per diffusion-step band (T_BANDS; batches must carry t as (x0, cond, t, eps) for the bands).

    Wang et al. (2026) report that the empirical Fisher is close to rank-1 at late (noisy) steps; the bands
    measure that premise on our own models."""
    if limit <= 0:
        return {}
    plist = params_list(model)
    mu_norm = float(mu @ mu) ** 0.5
    rows = []                                                   # (t or None, (u^T g_i)^2, ||g_i||^2, cos)
    for batch in batches:
        for i in range(_batch_size(batch)):
            if len(rows) >= limit:
                break
            one = _take(batch, i)
            gi = flatten(torch.autograd.grad(per_sample_loss(model, one).sum(), plist)).double()
            d, sq = float(gi @ mu) / mu_norm, float(gi @ gi)    # u^T g_i, ||g_i||^2
            t = int(one[2]) if len(one) == 4 else None
            rows.append((t, d * d, sq, d / (sq ** 0.5 + 1e-300)))
        if len(rows) >= limit:
            break

    def summarise(rs):
        return {"rank1_share": sum(r[1] for r in rs) / sum(r[2] for r in rs),
                "mean_cos": sum(r[3] for r in rs) / len(rs), "n": len(rs)}

    out = summarise(rows)
    out["bands"] = {f"{lo}-{hi}": summarise(rs) for lo, hi in T_BANDS
                    if (rs := [r for r in rows if r[0] is not None and lo <= r[0] < hi])}
    return out

# -----------------------------------------------------------------------------
# diagonal Fisher (classic EWC, Kirkpatrick et al. 2017), for comparison


class DiagonalFisher:
    """F ~ diag((1/N) sum_i g_i^2) around theta*; keeps theta* (P,) since diag does not factor."""

    def __init__(self, diag: torch.Tensor, theta_star: torch.Tensor, n_samples: int = 0):
        self.diag, self.theta_star, self.n_samples = diag.detach(), theta_star.detach(), int(n_samples)
        self.diagnostics = {}

    def scalars(self) -> dict:
        """What the training scripts check for finiteness and log at a task boundary."""
        return {"trace": float(self.diag.double().sum()), "max": float(self.diag.max())}

    def penalty(self, theta):
        d = theta.double() - self.theta_star.double()
        return 0.5 * (self.diag.double() * d * d).sum()

    def grad(self, theta):
        return (self.diag.double() * (theta.double() - self.theta_star.double())).to(self.diag.dtype)

    def matvec(self, v):
        return self.diag * v

    def dense(self):
        return torch.diag(self.diag.double())

    def to(self, device) -> "DiagonalFisher":
        self.diag, self.theta_star = self.diag.to(device), self.theta_star.to(device)
        return self

    def state_dict(self) -> dict:
        return {"kind": "diag", "diag": self.diag, "theta_star": self.theta_star, "n_samples": self.n_samples}

    @classmethod
    def from_state_dict(cls, sd: dict) -> "DiagonalFisher":
        return cls(sd["diag"], sd["theta_star"], sd["n_samples"])

    @classmethod
    def estimate(cls, model, per_sample_loss, batches, progress: bool = False, chunk: int = 16) -> "DiagonalFisher":
        """mean_i g_i^2 with per-sample gradients from torch.func.vmap(grad), `chunk` samples at a time."""
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        plist = params_list(model)

        def loss_one(ps, sample):
            one = tuple(v.unsqueeze(0) if torch.is_tensor(v) else v for v in sample)   # batch of 1
            return per_sample_loss(_functional(model, names, ps), one).sum()

        with _eval_mode(model):
            acc, n = None, 0
            for batch in tqdm(_passes(batches, 0), desc="diagonal Fisher", leave=False, disable=not progress):
                _checked(per_sample_loss(model, _take(batch, 0)), _take(batch, 0))
                B = _batch_size(batch)
                for s in range(0, B, chunk):
                    part = tuple(v[s:s + chunk] if torch.is_tensor(v) else v for v in batch)
                    dims = tuple(0 if torch.is_tensor(v) else None for v in part)
                    g = vmap(func_grad(loss_one), in_dims=(None, dims))(tuple(plist), part)  # per-sample
                    sq = flatten([x.reshape(x.shape[0], -1).double().pow(2).sum(0) for x in g])
                    acc = sq if acc is None else acc + sq
                    n += part[0].shape[0] if torch.is_tensor(part[0]) else _batch_size(part)
        return cls((acc / n).to(plist[0].dtype), flat_params(model), n)

def fisher_from_state_dict(sd: dict) -> Rank1Fisher | DiagonalFisher:
    return {"rank1": Rank1Fisher, "diag": DiagonalFisher}[sd["kind"]].from_state_dict(sd)

# -----------------------------------------------------------------------------
# the sampling protocol every experiment uses


FISHER_KINDS = ("rank1", "diag")


def estimate_on_task(model, sched, get, n_available: int, n_samples: int, batch_size: int, index_gen, noise_gen,
                     kind: str = "rank1", progress: bool = False,
                     diag_samples: int = 64) -> Rank1Fisher | DiagonalFisher:
    """The Fisher of a just-finished task at theta* = the current parameters, by one protocol for all experiments.

    Protocol (the authors' code, `src/parameter_scoring.py`): min(n_samples, n_available) items of the task's real
    training data, chosen once without replacement with index_gen (CPU); both passes of the rank-1 estimate
    run over the same items in the same order, each item with fresh t ~ U{0..T-1} and eps ~ N(0, I) in each
    pass, drawn from noise_gen (on the model's device); model in eval mode. The rank-1 diagnostics use a third
    draw, on their first diag_samples items.
    get(idx (n,) long) -> (x0, cond) on the model's device. kind "diag" gives classic EWC's DiagonalFisher.
    """
    if kind not in FISHER_KINDS:
        raise ValueError(f"unknown Fisher kind {kind!r}; choose one of {FISHER_KINDS}")
    idx = torch.randperm(n_available, generator=index_gen)[:n_samples]

    def batches(pass_index):
        for start in range(0, len(idx), batch_size):
            yield diffusion.with_noise(sched, get(idx[start:start + batch_size]), noise_gen)

    loss = diffusion.DenoisingLoss(sched)
    if kind == "diag":
        return DiagonalFisher.estimate(model, loss, batches, progress=progress)
    return Rank1Fisher.estimate(model, loss, batches, progress=progress, diag_samples=diag_samples)
