"""Continual meta-learning baselines: FTML (Finn et al. 2019) and VR-MCL (Wu et al. 2024), as the paper ran them.

Paper Section 4 ("Baselines", 4.1/4.2 implementation details), Tables 3-4, Appendix C.3. The method registry and
the learner factory that builds these learners by name are in learners.py; their step times in bench.py.

Notation: theta = model parameters, alpha = inner (SGD) learning rate, L_s / L_q = support / query loss,
xi_b = the b-th training batch (current batch + replay batch), r = VR-MCL's momentum ratio.

Support / query split. Each training batch, and the replay batch beside it, is split exactly in two:
    support = current[0::2] ∪ replay[0::2],   query = current[1::2] ∪ replay[1::2]
(even / odd positions; an odd batch is an error). A ReplayPool returns replay batches in task blocks, so
the even/odd rule puts every old task in both halves (a first-half / second-half rule would not).
Each loss is L = mean(loss_fn(current part)) + beta * mean(replay_loss_fn(replay part)), beta = 1.

FTML (Finn et al. 2019, Online Meta-Learning, Eq. for the FTML update; MAML with one inner step):
    U(theta)   = theta - alpha * grad L_s(theta)                          inner SGD step, alpha = 1e-4
    g(theta)   = d/dtheta L_q(U(theta))
               = (I - alpha H_s(theta)) grad L_q(U(theta))               second order (paper Eq. 10)
               ~ grad L_q(U(theta))                                      first order (default)
    theta      <- Adam(theta, g(theta)),  lr 2e-4                         (Tables 3-4)
Both orders run the same code: the inner gradient is taken with `create_graph=second_order`. Without
the graph it is a constant, so d U / d theta = I and autograd returns the first-order gradient.

VR-MCL (Wu et al., ICLR 2024), STORM-style variance-reduced meta-gradient:
    m_b = g(theta_b; xi_b) + r * (m_{b-1} - g(theta_{b-1}; xi_b)),   m_0 = g(theta_0; xi_0)
    theta_{b+1} <- Adam(theta_b, m_b)
g(theta_{b-1}; xi_b) is the meta-gradient at the previous iterate on the SAME batch and the same noise
(t, eps): about twice FTML's cost (paper Table 7: 41 h vs 29 h on CW10).
r = 0.15: the value in the official run commands for Seq-CIFAR-100 and Seq-TinyImageNet
(WuYichen-97/Meta-Continual-Learning-Revisited-ICLR2024, README.md, `--s_momentum 0.15`; 0.25 for
Seq-CIFAR-10; the argparse default in `models/vrmcl.py` is 0.8 but the flag is required). The paper does
not report r.

Deviations from the paper / the original methods:
  - VR-MCL's official code applies m_b with plain SGD (`p -= s_lr * m`, s_lr 0.35, `--asyn_update`), and
    learns per-parameter inner learning rates (La-MAML style, `task_lr`); the paper uses "Adam (outer), SGD
    (inner)" with inner lr 1e-4 for both meta baselines (Tables 3-4), so here m_b feeds Adam and alpha is fixed.
  - The official code clamps the inner gradient to +-grad_clip_norm; here the inner step is plain SGD
    (as in FTML and the paper's description); `grad_clip` clips the outer gradient (or m_b) by norm.
  - FTML's original follow-the-leader buffer over all past tasks' data is replaced by generative replay in
    support and query, replay ratio 1.0 (paper Section 4: "we replace experience replay with generative replay").
  - VR-MCL's state (theta_{b-1}, m_{b-1}) carries over task boundaries, as in the official code
    (its momentum list is never reset; the previous iterate is the current one at a task start).
"""
import torch
from torch.func import functional_call

import trust_region

# --------------------------------------------------------------------------------------------------
# Support / query split and the meta-gradient


def split_support_query(batch):
    """Split a batch tuple (x0, cond[, t, eps]) into (support, query) by even / odd position.

    Raises ValueError when the batch size is odd: the split must be exact (Tables 3-4: 64+64, 128+128).
    """
    n = batch[0].shape[0]
    if n % 2:
        raise ValueError(f"support/query split needs an even batch size, got {n}")
    support = tuple(None if x is None else x[0::2] for x in batch)
    query = tuple(None if x is None else x[1::2] for x in batch)
    return support, query


class _AtParams:
    """Call `model` with the parameters in `params` (a name -> tensor dict): model(x_t, t, cond)."""

    def __init__(self, model, params):
        self.model, self.params = model, params

    def __call__(self, *args):
        return functional_call(self.model, self.params, args)


def _objective(fn_model, loss_fn, replay_loss_fn, beta, batch, replay_batch, generator):
    """L = mean(loss_fn(batch)) + beta * mean(replay_loss_fn(replay_batch)) (Eq. 7 with replay ratio 1.0)."""
    loss_cur = loss_fn(fn_model, batch, generator).mean()
    if replay_batch is None:
        return loss_cur, loss_cur, None
    loss_replay = replay_loss_fn(fn_model, replay_batch, generator).mean()
    return loss_cur + beta * loss_replay, loss_cur, loss_replay


def meta_gradient(model, params, loss_fn, replay_loss_fn, batch, replay_batch=None, inner_lr=1e-4, beta=1.0,
                  second_order=False, generator=None, bf16=False):
    """One-inner-step MAML meta-gradient at `params` (name -> leaf tensor requiring grad).
    bf16: the forward passes under bf16 autocast (trust_region.forward_precision); gradients stay float32.

    Returns (grads, logs): grads is a list aligned with params.values(), zeros for unused parameters.
    The support loss draws its noise from `generator` first, then the query loss.
    """
    support, query = split_support_query(batch)
    rep_support, rep_query = (None, None) if replay_batch is None else split_support_query(replay_batch)
    names, leaves = list(params), list(params.values())

    device = leaves[0].device
    with trust_region.forward_precision(device, bf16):
        loss_s, _, _ = _objective(_AtParams(model, params), loss_fn, replay_loss_fn, beta, support, rep_support,
                                  generator)
    inner = torch.autograd.grad(loss_s, leaves, create_graph=second_order, allow_unused=True)
    adapted = {n: p if g is None else p - inner_lr * g for n, p, g in zip(names, leaves, inner)}  # U(theta)

    with trust_region.forward_precision(device, bf16):
        loss_q, loss_cur, loss_replay = _objective(_AtParams(model, adapted), loss_fn, replay_loss_fn, beta, query,
                                                   rep_query, generator)
    outer = torch.autograd.grad(loss_q, leaves, allow_unused=True)  # d L_q(U(theta)) / d theta
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(leaves, outer)]
    logs = {"loss": loss_q.detach(), "loss_support": loss_s.detach(), "loss_cur": loss_cur.detach()}
    if loss_replay is not None:
        logs["loss_replay"] = loss_replay.detach()
    return grads, logs


# --------------------------------------------------------------------------------------------------
# Learners (same interface as trust_region.TrustRegionLearner)


class FTMLLearner:
    """FTML with one inner SGD step and an Adam outer step; first order unless second_order=True."""

    def __init__(self, model, loss_fn, replay_loss_fn=None, lr=2e-4, inner_lr=1e-4, beta=1.0, second_order=False,
                 grad_clip=None, bf16=False):
        self.model, self.loss_fn, self.replay_loss_fn, self.bf16 = model, loss_fn, replay_loss_fn, bf16
        self.inner_lr, self.beta, self.second_order, self.grad_clip = inner_lr, beta, second_order, grad_clip
        self.named = {n: p for n, p in model.named_parameters() if p.requires_grad}
        params = list(self.named.values())
        self.opt = torch.optim.Adam(params, lr=lr, fused=params[0].is_cuda)  # outer Adam, Tables 3-4

    def _meta_gradient(self, params, batch, replay_batch, generator):
        if replay_batch is not None and self.replay_loss_fn is None:
            raise ValueError("a replay batch was given but the learner has no replay_loss_fn")
        return meta_gradient(self.model, params, self.loss_fn, self.replay_loss_fn, batch, replay_batch,
                             self.inner_lr, self.beta, self.second_order, generator, self.bf16)

    def _direction(self, batch, replay_batch, generator):
        """The outer gradient to hand to Adam: the meta-gradient at the current parameters."""
        return self._meta_gradient(self.named, batch, replay_batch, generator)

    def _apply(self, direction):
        params = list(self.named.values())
        for p, d in zip(params, direction):
            p.grad = d.detach().clone()
        grad_norm = trust_region.grad_norm_and_clip(params, self.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return grad_norm

    def step(self, batch, replay_batch=None, generator=None, log_terms=False):
        """One meta-update on a training batch (and a replay batch of the same size) -> dict of 0-d tensors
        (no host sync). log_terms is accepted for the learners' common interface; Eq. (9)'s terms do not
        exist here."""
        direction, logs = self._direction(batch, replay_batch, generator)
        logs["grad_norm"] = self._apply(direction)
        return logs

    def state_dict(self):
        return {"optimizer": self.opt.state_dict()}

    def load_state_dict(self, sd):
        self.opt.load_state_dict(sd["optimizer"])


class VRMCLLearner(FTMLLearner):
    """VR-MCL: FTML whose meta-gradient is replaced by the STORM estimate m_b before the Adam step."""

    def __init__(self, model, loss_fn, replay_loss_fn=None, lr=2e-4, inner_lr=1e-4, beta=1.0, second_order=False,
                 grad_clip=None, r=0.15, bf16=False):
        super().__init__(model, loss_fn, replay_loss_fn, lr, inner_lr, beta, second_order, grad_clip, bf16)
        self.r = r  # official run commands: --s_momentum 0.15 (see module docstring)
        self.prev_params = None  # theta_{b-1}: list of tensors
        self.momentum = None  # m_{b-1}: list of tensors

    def _direction(self, batch, replay_batch, generator):
        if generator is None:  # both evaluations must see the same noise: make the stream explicit
            generator = torch.Generator(batch[0].device)
            generator.manual_seed(int(torch.randint(2**62, ())))
        rng_state = generator.get_state()
        g_cur, logs = self._meta_gradient(self.named, batch, replay_batch, generator)  # g(theta_b; xi_b)
        current = [p.detach().clone() for p in self.named.values()]
        if self.momentum is None:
            m = g_cur  # m_0 = g(theta_0; xi_0)
        else:
            end_state = generator.get_state()
            generator.set_state(rng_state)  # same t, eps draws for the previous iterate
            prev = {n: p.requires_grad_(True) for n, p in zip(self.named, self.prev_params)}
            g_prev, _ = self._meta_gradient(prev, batch, replay_batch, generator)  # g(theta_{b-1}; xi_b)
            generator.set_state(end_state)
            # STORM (Wu et al. 2024): m_b = g(theta_b; xi_b) + r (m_{b-1} - g(theta_{b-1}; xi_b))
            m = [g + self.r * (m_old - g_old) for g, m_old, g_old in zip(g_cur, self.momentum, g_prev)]
        self.prev_params = current
        self.momentum = [x.detach() for x in m]
        return self.momentum, logs

    def state_dict(self):
        return {"optimizer": self.opt.state_dict(), "prev_params": self.prev_params, "momentum": self.momentum}

    def load_state_dict(self, sd):
        self.opt.load_state_dict(sd["optimizer"])
        self.prev_params, self.momentum = sd["prev_params"], sd["momentum"]
