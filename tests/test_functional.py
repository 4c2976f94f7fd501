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

