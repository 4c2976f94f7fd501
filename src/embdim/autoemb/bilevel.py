"""The controller update of AutoEmb's Algorithm 1 (line 3; eq. 8-9): descend

    grad_Theta L_val(W - xi * grad_W L_train(W, Theta), Theta)

* ``xi = 0`` (``order: first``): ``grad_Theta L_val(W, Theta)``;
* ``xi > 0`` (``order: second``, the default): the DARTS approximation (Liu et al. 2019, eq. 7-8):
  with ``W' = W - xi grad_W L_train(W, Theta)`` and ``v = grad_W' L_val(W', Theta)``::

      grad_Theta L_val(W', Theta) - xi * [grad_Theta L_train(W+, Theta)
                                          - grad_Theta L_train(W-, Theta)] / (2 eps)

  where ``W+- = W +- eps v`` and ``eps = eps_scale / ||v||`` (a finite-difference Hessian-vector
  product: two extra forward/backward passes instead of second derivatives).

Id tables with sparse gradients (``nn.Embedding(sparse=True)``, ``train.optimizer: sparse_adam``) are
handled row-wise: only the rows a gradient touches are changed, saved and restored, so the update
costs O(rows in the two batches), not O(ids).

The losses are closures that run a forward pass with the current values of ``W`` and ``Theta``.
The normalisation layers of the given modules (those with an ``update_stats`` flag,
:class:`embdim.autoemb.model.StreamNorm`) do not update their running statistics during these
passes, so every pass sees the statistics of before the update; ``W`` and every buffer are
restored at the end: the update changes nothing but the returned gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

LossFn = Callable[[], Tensor]


def _zeros_for_none(params: Sequence[Tensor], grads: Sequence[Tensor | None]) -> list[Tensor]:
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


class _RowSaver:
    """The original values of the rows of a sparse-gradient table that the update changes."""

    def __init__(self, param: Tensor):
        self.param = param
        self.index = torch.empty(0, dtype=torch.long, device=param.device)
        self.rows = param.new_empty((0, *param.shape[1:]))

    def save(self, index: Tensor) -> None:
        new = torch.unique(index[~torch.isin(index, self.index)])
        if len(new):
            self.rows = torch.cat([self.rows, self.param.detach()[new].clone()])
            self.index = torch.cat([self.index, new])

    def add(self, grad: Tensor, scale: float) -> None:
        """``param += scale * grad`` (grad sparse), saving the rows first."""
        g = grad.coalesce()
        index = g.indices()[0]
        self.save(index)
        with torch.no_grad():
            self.param.index_add_(0, index, g.values(), alpha=scale)

    def restore(self) -> None:
        with torch.no_grad():
            self.param[self.index] = self.rows


def _sq_norm(g: Tensor) -> Tensor:
    return (g.coalesce().values() if g.is_sparse else g).double().square().sum()


def _add(p: Tensor, g: Tensor, scale: float, savers: dict[int, _RowSaver]) -> None:
    if g.is_sparse:
        savers.setdefault(id(p), _RowSaver(p)).add(g, scale)
    else:
        with torch.no_grad():
            p.add_(g, alpha=scale)


def controller_gradient(w_params: Sequence[Tensor], theta_params: Sequence[Tensor],
                        train_loss: LossFn | None, val_loss: LossFn, *, xi: float,
                        eps_scale: float = 0.01,
                        modules: Sequence[nn.Module] = (),
                        sparse_params: Sequence[Tensor] = ()) -> tuple[list[Tensor], Tensor]:
    """The gradient of the validation loss w.r.t. ``theta_params`` (module docstring) and the
    validation loss (at ``W'``). ``train_loss`` may be None only with ``xi = 0``.
    ``sparse_params``: the members of ``w_params`` with sparse gradients (id tables), which are
    saved and restored row by row instead of copied whole."""
    w_params, theta_params = list(w_params), list(theta_params)
    second = xi > 0 and train_loss is not None
    sparse = {id(p) for p in sparse_params}
    saved_w = [None if id(p) in sparse else p.detach().clone() for p in w_params] if second else []
    savers: dict[int, _RowSaver] = {}
    saved_buffers = [{k: b.detach().clone() for k, b in m.named_buffers()} for m in modules]
    norms = [n for m in modules for n in m.modules() if hasattr(n, "update_stats")]
    flags = [n.update_stats for n in norms]
    for n in norms:
        n.update_stats = False

    def restore_buffers() -> None:
        with torch.no_grad():
            for m, saved in zip(modules, saved_buffers, strict=True):
                for k, b in m.named_buffers():
                    b.copy_(saved[k])

    def run(fn: LossFn) -> Tensor:
        return fn()

    try:
        if second:
            g_train = torch.autograd.grad(run(train_loss), w_params, allow_unused=True)
            for p, g in zip(w_params, g_train, strict=True):
                if g is not None:
                    _add(p, g, -xi, savers)
        loss = run(val_loss)
        if not second:
            grads = torch.autograd.grad(loss, theta_params, allow_unused=True)
            return _zeros_for_none(theta_params, grads), loss.detach()
        grads = torch.autograd.grad(loss, theta_params + w_params, allow_unused=True)
        d_theta = _zeros_for_none(theta_params, grads[:len(theta_params)])
        d_w = _zeros_for_none(w_params, grads[len(theta_params):])
        norm = torch.sqrt(sum(_sq_norm(g) for g in d_w)).item()
        if norm == 0.0:
            return d_theta, loss.detach()
        eps = eps_scale / norm
        terms = []
        for sign in (1.0, -1.0):
            for p, w0, v in zip(w_params, saved_w, d_w, strict=True):
                if w0 is None:
                    if id(p) in savers:
                        savers[id(p)].restore()
                else:
                    with torch.no_grad():
                        p.copy_(w0)
                _add(p, v, sign * eps, savers)
            terms.append(_zeros_for_none(theta_params, torch.autograd.grad(
                run(train_loss), theta_params, allow_unused=True)))
        result = [g - xi * (gp - gm) / (2.0 * eps)
                  for g, gp, gm in zip(d_theta, terms[0], terms[1], strict=True)]
        return result, loss.detach()
    finally:
        with torch.no_grad():
            for p, w0 in zip(w_params, saved_w, strict=False):
                if w0 is not None:
                    p.copy_(w0)
        for saver in savers.values():
            saver.restore()
        restore_buffers()
        for n, flag in zip(norms, flags, strict=True):
            n.update_stats = flag


def apply_gradient(params: Sequence[Tensor], grads: Sequence[Tensor],
                   optimizer: torch.optim.Optimizer) -> None:
    """Set ``params``' gradients to ``grads`` and take one step of their optimiser."""
    optimizer.zero_grad(set_to_none=True)
    for p, g in zip(params, grads, strict=True):
        p.grad = g.detach().clone()
    optimizer.step()
