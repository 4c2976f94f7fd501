"""The fast dropout: right drop rate, inverted scaling, gradient through kept elements only."""

import pytest
import torch

from embdim.nn.functional import dropout


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_drop_rate_and_scaling(p):
    torch.manual_seed(0)
    x = torch.ones(512, 256, requires_grad=True)
    y = dropout(x, p, training=True)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - p) < 0.01
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / (1 - p)))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d(sum y)/dx = mask / (1 - p)


def test_identity_in_eval_and_at_zero():
    x = torch.randn(10, 4)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0, training=True) is x
    assert torch.equal(dropout(x, 1.0, training=True), torch.zeros_like(x))


def test_follows_the_torch_seed():
    x = torch.ones(64, 64)
    torch.manual_seed(3)
    a = dropout(x, 0.3, True)
    torch.manual_seed(3)
    assert torch.equal(a, dropout(x, 0.3, True))



def test_fm_interaction_is_the_pairwise_sum_with_an_exact_gradient():
    """FM's term with the closed-form backward: values and first and second derivatives (float64
    gradcheck / gradgradcheck) equal sum_{i<j} <v_i, v_j> written out."""
    from embdim.nn.functional import fm_interaction

    torch.manual_seed(0)
    x = torch.randn(7, 5, 3, dtype=torch.float64, requires_grad=True)
    pairs = sum((x[:, i] * x[:, j]).sum(-1) for i in range(5) for j in range(i + 1, 5))
    assert torch.allclose(fm_interaction(x), pairs)
    g = torch.randn(7, dtype=torch.float64)
    (want,) = torch.autograd.grad((pairs * g).sum(), x)
    (got,) = torch.autograd.grad((fm_interaction(x) * g).sum(), x)
    assert torch.allclose(got, want)
    assert torch.autograd.gradcheck(fm_interaction, (x,))
    assert torch.autograd.gradgradcheck(fm_interaction, (x,))
