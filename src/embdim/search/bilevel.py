"""DARTS steps for AutoDim's bilevel optimisation (AutoDim sec. 2.3, Alg. 1, eq. 11-12).

``W`` (every model parameter except the architecture weights) descends the training loss;
``alpha`` descends the validation loss ``L_val(W*(alpha), alpha)`` with ``W*(alpha)`` approximated by
one gradient step (eq. 12): ``W' = W - xi * grad_W L_train(W, alpha)``.

* first order (``xi = 0``, the paper's practice): ``grad_alpha L_val(W, alpha)``;
* second order (DARTS, Liu et al. 2019, eq. 7-8)::

      grad_alpha L_val(W', alpha)
        - xi * [grad_alpha L_train(W+, alpha) - grad_alpha L_train(W-, alpha)] / (2 eps)

  with ``W+- = W +- eps * grad_W' L_val(W', alpha)`` and ``eps = eps_scale / ||grad_W' L_val||``.
  The virtual step is a plain gradient step (DARTS also folds the inner optimiser's momentum and
  weight decay in; with Adam as the inner optimiser there is no such simple form).

Every step computes gradients only for the parameters it updates (``backward(inputs=...)``), so
``alpha`` never receives a gradient from a training batch in the bilevel mode. Within one
second-order step, the several forward passes over the same batch see the same random draws
(Gumbel noise, dropout masks): each forward runs under a forked RNG seeded per step and batch, so
the finite differences compare the same function.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from embdim import distributed

Batch = tuple[Tensor, Tensor]  # ids [B, F], labels [B]


def batch_loss(model: nn.Module, batch: Batch) -> Tensor:
    """Binary cross-entropy (eq. 10) of ``model`` on ``batch``: a scalar."""
    ids, labels = batch
    logits = model(ids)
    if logits.dtype in (torch.float16, torch.bfloat16):  # under autocast: the loss in float32
        logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def w_step(model: nn.Module, w_params: Sequence[Tensor], optimizer: torch.optim.Optimizer,
           batch: Batch) -> Tensor:
    """One update of ``W`` on a training batch (Alg. 1 lines 4-6); returns the detached loss.
    The other parameters (``alpha``) are frozen for the step, so that no gradient towards them is
    computed at all."""
    w_ids = {id(p) for p in w_params}
    with _frozen([p for p in model.parameters() if p.requires_grad and id(p) not in w_ids]):
        loss = batch_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=list(w_params))
    distributed.average_gradients(w_params)  # data-parallel (torchrun): the global-batch gradient
    optimizer.step()
    return loss.detach()


@contextmanager
def _frozen(params: Sequence[Tensor]):
    """``requires_grad`` off for ``params`` inside the block, back on afterwards."""
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def joint_step(model: nn.Module, w_params: Sequence[Tensor], alpha_params: Sequence[Tensor],
               w_optimizer: torch.optim.Optimizer, alpha_optimizer: torch.optim.Optimizer,
               batch: Batch) -> Tensor:
    """AutoDim-s: ``W`` and ``alpha`` descend the same training-batch loss together."""
    loss = batch_loss(model, batch)
    w_optimizer.zero_grad(set_to_none=True)
    alpha_optimizer.zero_grad(set_to_none=True)
    loss.backward(inputs=[*w_params, *alpha_params])
    distributed.average_gradients([*w_params, *alpha_params])
    w_optimizer.step()
    alpha_optimizer.step()
    return loss.detach()


def first_order_alpha_grad(model: nn.Module, alpha_params: Sequence[Tensor],
                           valid_batch: Batch) -> tuple[list[Tensor], Tensor]:
    """``grad_alpha L_val(W, alpha)`` (eq. 12 with ``xi = 0``) and the validation loss.

    ``W`` is not touched, and neither are the model's buffers: the forward on the validation batch
    runs in train mode (batch statistics, as the W-steps) but its BatchNorm running statistics are
    put back, as the second-order step does, so validation rows never enter the model's state.
    """
    saved_buffers = _buffers(model)
    alpha_ids = {id(p) for p in alpha_params}
    try:
        with _frozen([p for p in model.parameters() if p.requires_grad and id(p) not in alpha_ids]):
            loss = batch_loss(model, valid_batch)  # W frozen: no gradient towards W is computed
            grads = torch.autograd.grad(loss, list(alpha_params))
    finally:
        _restore_buffers(model, saved_buffers)
    return list(grads), loss.detach()


class _SameDraws:
    """Runs a forward under a forked torch RNG seeded with ``seed``: equal draws on every call."""

    def __init__(self, seed: int):
        self.seed = seed

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        devices = [batch[0].device] if batch[0].device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            return batch_loss(model, batch)


def _buffers(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.named_buffers()}


@torch.no_grad()
def _restore_buffers(model: nn.Module, saved: dict[str, Tensor]) -> None:
    for k, v in model.named_buffers():
        if k in saved:
            v.copy_(saved[k])


def second_order_alpha_grad(model: nn.Module, w_params: Sequence[Tensor],
                            alpha_params: Sequence[Tensor], train_batch: Batch, valid_batch: Batch,
                            *, xi: float, eps_scale: float = 0.01,
                            seed: int | None = None) -> tuple[list[Tensor], Tensor]:
    """The DARTS unrolled gradient of ``L_val(W - xi grad_W L_train(W, alpha), alpha)`` w.r.t.
    ``alpha``, with the finite-difference Hessian-vector product (module docstring).

    ``W`` and the model's buffers (BatchNorm running statistics) are left exactly as they were.
    Returns the gradients (one per alpha tensor) and the validation loss at ``W'``.
    """
    w_params, alpha_params = list(w_params), list(alpha_params)
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
    train_draws, valid_draws = _SameDraws(seed), _SameDraws(seed + 1)
    saved_w = [p.detach().clone() for p in w_params]
    saved_buffers = _buffers(model)
    try:
        # 1. the virtual step W' = W - xi * grad_W L_train(W, alpha)
        g_train = torch.autograd.grad(train_draws.loss(model, train_batch), w_params,
                                      allow_unused=True)
        with torch.no_grad():
            for p, g in zip(w_params, g_train, strict=True):
                if g is not None:
                    p.sub_(xi * g)
        # 2. grad of L_val at W' w.r.t. alpha and W'
        val_loss = valid_draws.loss(model, valid_batch)
        grads = torch.autograd.grad(val_loss, alpha_params + w_params, allow_unused=True)
        d_alpha = [torch.zeros_like(a) if g is None else g for a, g in
                   zip(alpha_params, grads[:len(alpha_params)], strict=True)]
        d_w = [torch.zeros_like(p) if g is None else g for p, g in
               zip(w_params, grads[len(alpha_params):], strict=True)]
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in d_w)).item()
        if norm == 0.0 or xi == 0.0:
            return d_alpha, val_loss.detach()
        eps = eps_scale / norm
        # 3. finite-difference Hessian-vector product around the original W
        hessian_terms = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for p, w0, v in zip(w_params, saved_w, d_w, strict=True):
                    p.copy_(w0).add_(sign * eps * v)
            loss = train_draws.loss(model, train_batch)
            hessian_terms.append(torch.autograd.grad(loss, alpha_params, allow_unused=True))
        result = []
        for a, g_val, gp, gm in zip(alpha_params, d_alpha, *hessian_terms, strict=True):
            gp = torch.zeros_like(a) if gp is None else gp
            gm = torch.zeros_like(a) if gm is None else gm
            result.append(g_val - xi * (gp - gm) / (2.0 * eps))
        return result, val_loss.detach()
    finally:
        with torch.no_grad():
            for p, w0 in zip(w_params, saved_w, strict=True):
                p.copy_(w0)
        _restore_buffers(model, saved_buffers)


def apply_alpha_grad(alpha_params: Sequence[Tensor], grads: Sequence[Tensor],
                     optimizer: torch.optim.Optimizer) -> None:
    """Set ``alpha``'s gradients and take one step of its own optimiser (Alg. 1 line 3)."""
    optimizer.zero_grad(set_to_none=True)
    # Data-parallel: the mean of the processes' hypergradients (each from its own batches).
    for a, g in zip(alpha_params, distributed.average_tensors([g.detach() for g in grads]), strict=True):
        a.grad = g.detach().clone()
    optimizer.step()
