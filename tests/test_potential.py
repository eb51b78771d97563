"""The flat potential of a model in initialize_model's layout: value, gradient, transforms."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from torch.distributions import biject_to

from pyrovi._potential import potential_from_model

F64 = torch.float64


def scale_model(y):
    s = pyro.sample("s", dist.HalfNormal(torch.tensor(1.0, dtype=F64)))
    mu = pyro.sample("mu", dist.Normal(torch.zeros(2, dtype=F64), 1.0).to_event(1))
    with pyro.plate("n", y.shape[0]):
        pyro.sample("y", dist.Normal(mu.sum(), s), obs=y)


Y = torch.tensor([0.3, -0.2, 1.1], dtype=F64)


def _log_joint_with_jacobian(u_values):
    trace = poutine.trace(scale_model).get_trace(Y)
    constrained, logdet = {}, 0.0
    for name, u in u_values.items():
        t = biject_to(trace.nodes[name]["fn"].support)
        constrained[name] = t(u)
        logdet = logdet + t.log_abs_det_jacobian(u, constrained[name]).sum()
    conditioned = poutine.trace(poutine.condition(scale_model, constrained)).get_trace(Y)
    return conditioned.log_prob_sum() + logdet


def test_batched_value_and_gradient_are_the_log_joint_with_jacobian():
    potential = potential_from_model(scale_model, (Y,), {}, 1)
    layout = potential.layout
    assert set(layout.names) == {"s", "mu"} and layout.dim == 3
    u = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    value, grad = potential.log_density_and_grad(u)
    assert value.shape == (4,) and grad.shape == (4, 3)
    for i in range(4):
        row = u[i].clone().requires_grad_(True)
        expected = _log_joint_with_jacobian(layout.unpack(row))
        (expected_grad,) = torch.autograd.grad(expected, row)
        assert float(value[i]) == pytest.approx(float(expected.detach()), rel=1e-12)
        torch.testing.assert_close(grad[i], expected_grad, rtol=1e-10, atol=1e-12)


def test_to_unconstrained_inverts_the_transforms():
    potential = potential_from_model(scale_model, (Y,), {}, 1)
    values = {"s": torch.tensor([0.5, 2.0], dtype=F64),
              "mu": torch.tensor([[1.0, -1.0], [0.0, 3.0]], dtype=F64)}
    flat = potential.to_unconstrained(values, 2)
    assert flat.shape == (2, 3)
    back = potential.layout.unpack(flat)
    torch.testing.assert_close(back["s"], values["s"].log())
    torch.testing.assert_close(back["mu"], values["mu"])
