"""Exact E-steps by enumeration (pyrovi.em.estep): the closed-form local marginals agree
with Pyro's tensor contraction and with sums written out by hand."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

from pyrovi.em.estep import (
    _contracted_marginals,
    _factors,
    _local_marginals,
    enum_trace,
)

X = torch.tensor([-2.0, -1.5, 0.3, 1.9, 2.4, 0.1])
W = torch.tensor([0.2, 0.5, 0.3])
LOCS = torch.tensor([-2.0, 0.0, 2.0])


def mixture(x):
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(W))
        pyro.sample("x", dist.Normal(LOCS[z], 1.0), obs=x)


def masked_mixture(x):
    # the last two points are masked out: their assignment still sums to one (its evidence
    # factor is unmasked), their observation does not count
    keep = torch.arange(len(x)) < len(x) - 2
    with pyro.plate("data", len(x)), poutine.mask(mask=keep):
        z = pyro.sample("z", dist.Categorical(W))
        pyro.sample("x", dist.Normal(LOCS[z], 1.0), obs=x)


def two_assignments(x):
    with pyro.plate("data", len(x)):
        a = pyro.sample("a", dist.Categorical(W))
        b = pyro.sample("b", dist.Bernoulli(0.3))
        pyro.sample("x", dist.Normal(LOCS[a], 1.0), obs=x)
        pyro.sample("y", dist.Normal(2.0 * b - 1.0, 0.5), obs=x.flip(0))


def global_assignment(x):
    z = pyro.sample("z", dist.Categorical(W))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(LOCS[z], 1.0), obs=x)


def _both(model):
    trace = enum_trace(model, 1, (X,), {})
    factors, _, sum_dims = _factors(trace, evidence=True)
    return _local_marginals(factors, sum_dims), _contracted_marginals(factors, sum_dims)


def _mixture_log_evidence(x, keep):
    joint = W.log() + dist.Normal(LOCS, 1.0).log_prob(x.unsqueeze(-1))
    return joint.logsumexp(-1)[keep].sum()


@pytest.mark.parametrize("model", [mixture, masked_mixture, two_assignments])
def test_local_marginals_are_the_contraction(model):
    (log_z, weights), (ref_z, ref_weights) = _both(model)
    assert float(log_z) == pytest.approx(float(ref_z), abs=1e-5)
    assert len(weights) == len(ref_weights)
    for w, ref in zip(weights, ref_weights, strict=True):
        assert w.shape == ref.shape
        torch.testing.assert_close(w, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model, keep", [(mixture, slice(None)), (masked_mixture, slice(0, 4))])
def test_local_log_evidence_by_hand(model, keep):
    (log_z, weights), _ = _both(model)
    assert float(log_z) == pytest.approx(float(_mixture_log_evidence(X, keep)), abs=1e-5)


def test_a_global_assignment_is_left_to_the_contraction():
    # z outside the data plate: each observation's factor is a product over the plate
    # before the sum over z, which the local formula does not do
    (local, (log_z, _)) = _both(global_assignment)
    assert local is None
    by_hand = (W.log() + dist.Normal(LOCS, 1.0).log_prob(X.unsqueeze(-1)).sum(0)).logsumexp(0)
    assert float(log_z) == pytest.approx(float(by_hand), abs=1e-5)
