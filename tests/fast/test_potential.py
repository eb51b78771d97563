"""The flat log-density equals Pyro's log joint (with the Jacobians) in the guide's layout,
and tracing refuses models whose graph is not static."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import autoguide
from torch.distributions import biject_to

from pyrovi.fast.potential import (
    TraceError,
    build_potential,
    layout_from_trace,
    trace_log_density,
)
from pyrovi.models import eight_schools_noncentered
from tests.fast.models import data, logistic_regression


def _setup(model, args, nesting=1):
    guide = autoguide.AutoMultivariateNormal(model)
    with pyro.get_param_store().scope():
        guide(*args)
    layout = layout_from_trace(guide.prototype_trace)
    return guide, layout, build_potential(model, args, {}, layout, nesting)


def _log_joint(model, args, values, jacobian):
    """Pyro's log joint at constrained values ``T(u)``, plus log|det J_T| if asked."""
    constrained, logdet = {}, 0.0
    trace = poutine.trace(model).get_trace(*args)
    for name, u in values.items():
        t = biject_to(trace.nodes[name]["fn"].support)
        constrained[name] = t(u)
        logdet = logdet + t.log_abs_det_jacobian(u, constrained[name]).sum()
    conditioned = poutine.trace(poutine.condition(model, constrained)).get_trace(*args)
    return conditioned.log_prob_sum() + (logdet if jacobian else 0.0)


def _assert_log_joint(graph, model, args, layout, u, rtol, atol, batched=True):
    """The graph's value and gradient at each row of ``u`` (batched with vmap, or one point
    at a time) are Pyro's log joint's, Jacobians included."""
    values = torch.vmap(graph)(u) if batched else None
    for i in range(u.shape[0]):
        point = u[i].clone().requires_grad_()
        value = _log_joint(model, args, layout.unpack(point), True)
        (expected,) = torch.autograd.grad(value, point)
        if batched:
            traced, grad = values[i], torch.func.grad(graph)(u[i])
        else:
            traced = graph(point)
            (grad,) = torch.autograd.grad(traced, point)
        torch.testing.assert_close(traced.detach(), value.detach(), rtol=rtol, atol=atol)
        torch.testing.assert_close(grad, expected, rtol=rtol, atol=atol)


def test_layout_is_the_autoguide_latent_layout():
    args = data("logistic_regression")
    guide, layout, _ = _setup(logistic_regression, args)
    latent = torch.randn(layout.dim)
    assert layout.dim == guide.latent_dim == 6
    for site, value in guide._unpack_latent(latent):
        torch.testing.assert_close(layout.unpack(latent)[site["name"]], value)
    torch.testing.assert_close(layout.pack(layout.unpack(latent)), latent)


@pytest.mark.parametrize("jacobian", [True, False])
def test_flat_log_density_is_the_log_joint(jacobian):
    args = data("logistic_regression")
    _, layout, potential = _setup(logistic_regression, args)
    for seed in range(3):
        u = torch.randn(layout.dim, generator=torch.Generator().manual_seed(seed))
        expected = _log_joint(logistic_regression, args, layout.unpack(u), jacobian)
        torch.testing.assert_close(potential.log_density(u, jacobian), expected)
        graph = trace_log_density(potential, u, jacobian=jacobian)
        torch.testing.assert_close(graph(u + 0.1), potential.log_density(u + 0.1, jacobian))


def _branching(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    if mu > 0:
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)
    else:
        pyro.sample("x", dist.Normal(mu, 2.0), obs=x)


def _noisy(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    pyro.sample("x", dist.Normal(mu + torch.randn(()), 1.0), obs=x)


@pytest.mark.parametrize("model, match", [(_branching, "control flow"), (_noisy, "randomness")])
def test_dynamic_models_are_refused(model, match):
    args = (torch.tensor(0.3),)
    _, layout, potential = _setup(model, args, nesting=0)
    with pytest.raises(TraceError, match=match):
        trace_log_density(potential, torch.zeros(layout.dim))


def _changing(x, state={"calls": 0}):  # noqa: B006 - the mutable default is the point
    state["calls"] += 1
    n = 1 if state["calls"] % 2 else 2
    pyro.sample("mu", dist.Normal(0.0, 1.0).expand([n]).to_event(1))
    pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)


def test_structure_change_between_traces_is_refused():
    args = (torch.tensor(0.3),)
    reference = poutine.trace(_changing).get_trace(*args)
    layout = layout_from_trace(reference)
    with pytest.raises(TraceError, match="structure changes"):
        build_potential(_changing, args, {}, layout, 0, reference=reference)


def _linear_predictor_model(X, y):
    # (X * w).sum(-1) is the broadcasting linear predictor; (X * w).sum(-1, keepdim=True)
    # and a product used twice are left as they are
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[1]), 1.0).to_event(1))
    prod = X * (0.5 * w)
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal((X * w).sum(-1), 1.0), obs=y)
        pyro.sample("z", dist.Normal(prod.sum(-1) + prod[:, 0], 1.0), obs=y)
        pyro.sample("v", dist.Normal((X * w).sum(-1, keepdim=True).squeeze(-1), 2.0), obs=y)


def test_broadcast_products_become_matrix_products():
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(50, 4, generator=g), torch.randn(50, generator=g)
    _, layout, potential = _setup(_linear_predictor_model, (X, y))
    graph = trace_log_density(potential, torch.zeros(layout.dim))
    targets = [n.target for n in graph.graph.nodes if n.op == "call_function"]
    aten = torch.ops.aten
    assert targets.count(aten.matmul.default) == 1  # the first predictor only
    u = torch.randn(7, layout.dim, generator=g)
    batched = torch.vmap(graph)(u)
    for i in range(7):
        value = _log_joint(_linear_predictor_model, (X, y), layout.unpack(u[i]), True)
        torch.testing.assert_close(batched[i], value, rtol=1e-5, atol=1e-4)
    # and the gradient through the rewritten graph is the log joint's
    grad = torch.func.grad(graph)(u[0])
    point = u[0].clone().requires_grad_()
    value = _log_joint(_linear_predictor_model, (X, y), layout.unpack(point), True)
    (expected,) = torch.autograd.grad(value, point)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-5)


def _varying_intercepts(county, x, y, num_counties, keepdim):
    # the radon model's shape: a scalar sigma broadcast over N observations, a gather;
    # keepdim: sigma written to broadcast over particles, sigma[..., None] of shape (1,)
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    sigma_a = pyro.sample("sigma_a", dist.HalfNormal(2.0))
    sigma_y = pyro.sample("sigma_y", dist.HalfNormal(2.0))
    with pyro.plate("groups", num_counties):
        a_raw = pyro.sample("a_raw", dist.Normal(0.0, 1.0))
    a = mu + sigma_a * a_raw
    with pyro.plate("obs", x.shape[0]):
        scale = sigma_y[..., None] if keepdim else sigma_y
        pyro.sample("y", dist.Normal(a[county] + 0.5 * x, scale), obs=y)


@pytest.mark.parametrize("keepdim", [False, True])
def test_broadcast_parameters_are_computed_once(keepdim):
    g = torch.Generator().manual_seed(1)
    n, groups = 200, 7
    county = torch.randint(groups, (n,), generator=g)
    x, y = torch.randn(n, generator=g), torch.randn(n, generator=g)
    args = (county, x, y, groups, keepdim)
    _, layout, potential = _setup(_varying_intercepts, args)
    graph = trace_log_density(potential, torch.zeros(layout.dim))
    aten = torch.ops.aten
    per_obs = [
        node.target for node in graph.graph.nodes
        if node.op == "call_function" and isinstance(node.meta.get("val"), torch.Tensor)
        and node.meta["val"].shape == (n,)
    ]
    # sigma_y ** 2 and log(sigma_y) once, not per observation; the constant, the division
    # by 2 sigma^2 and the negation after the sum; the gather as index_select
    assert aten.log.default not in per_obs and aten.div.Tensor not in per_obs
    assert aten.neg.default not in per_obs and aten.index.Tensor not in per_obs
    assert per_obs.count(aten.pow.Tensor_Scalar) == 1  # (y - mean) ** 2
    u = torch.randn(5, layout.dim, generator=g)
    _assert_log_joint(graph, _varying_intercepts, args, layout, u, 1e-5, 1e-4)


def _binary_outcomes(X, y, likelihood):
    # a logistic regression as users write it, X @ w; its likelihood a Bernoulli on logits
    # or on probabilities, or a ContinuousBernoulli, whose targets are not 0 or 1
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[1], dtype=X.dtype), 1.0).to_event(1))
    b = pyro.sample("b", dist.Normal(torch.tensor(0.0, dtype=X.dtype), 1.0))
    logits = X @ w + b
    with pyro.plate("data", X.shape[0]):
        if likelihood == "probs":
            pyro.sample("y", dist.Bernoulli(probs=torch.sigmoid(logits)), obs=y)
        elif likelihood == "continuous":
            pyro.sample("y", dist.ContinuousBernoulli(logits=logits), obs=y)
        else:
            pyro.sample("y", dist.Bernoulli(logits=logits), obs=y)


@pytest.mark.parametrize("likelihood", ["logits", "probs", "continuous"])
def test_bernoulli_log_likelihood_is_two_fused_ops(likelihood):
    g = torch.Generator().manual_seed(2)
    n = 150
    X = torch.randn(n, 4, generator=g, dtype=torch.float64)
    y = torch.rand(n, generator=g, dtype=torch.float64)
    if likelihood != "continuous":
        y = (y < 0.4).double()
    args = (X, y, likelihood)
    _, layout, potential = _setup(_binary_outcomes, args)
    graph = trace_log_density(potential, torch.zeros(layout.dim, dtype=torch.float64))
    aten = torch.ops.aten
    targets = [node.target for node in graph.graph.nodes if node.op == "call_function"]
    # (1 - y) l - logsigmoid(l), not the loss op whose batching rule and backward take ten
    assert aten.binary_cross_entropy_with_logits.default not in targets
    assert targets.count(aten.log_sigmoid.default) == 1
    u = torch.randn(5, layout.dim, generator=g, dtype=torch.float64) * 2.0
    _assert_log_joint(graph, _binary_outcomes, args, layout, u, 1e-10, 1e-10)


def _written_into(sigma, y):
    # eight schools with the group means written into a constant buffer in place
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=sigma.dtype), 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(torch.tensor(5.0, dtype=sigma.dtype)))
    with pyro.plate("schools", sigma.shape[0]):
        eta = pyro.sample("eta", dist.Normal(torch.tensor(0.0, dtype=sigma.dtype), 1.0))
    theta = torch.zeros(sigma.shape[0], dtype=sigma.dtype)
    theta[:] = mu + tau * eta
    with pyro.plate("obs", sigma.shape[0]):
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)


def _depends_on_the_point(graph):
    """The call_function nodes whose value depends on the placeholder."""
    dynamic = set()
    for node in graph.graph.nodes:
        if node.op == "placeholder" or any(a in dynamic for a in node.all_input_nodes):
            dynamic.add(node)
    return [n for n in graph.graph.nodes if n.op == "call_function"], dynamic


@pytest.mark.parametrize("model", [eight_schools_noncentered, _written_into])
def test_what_does_not_depend_on_the_point_is_computed_once(model):
    from pyrovi.datasets import eight_schools

    y, sigma = eight_schools()
    args = (sigma.double(), y.double())
    _, layout, potential = _setup(model, args)
    graph = trace_log_density(potential, torch.zeros(layout.dim, dtype=torch.float64))
    calls, dynamic = _depends_on_the_point(graph)
    constant = [n.target for n in calls if n not in dynamic]
    if model is eight_schools_noncentered:
        # log(scale), scale ** 2 of the priors and the likelihood, the data's copies, the
        # zeros of the identity Jacobians: hoisted; what is left reads the point
        assert constant == []
        aten = torch.ops.aten
        assert aten.zeros_like.default not in [n.target for n in calls]
    else:  # an in-place write into a constant (which vmap refuses): nothing is hoisted
        assert torch.ops.aten.zeros.default in constant
    u = torch.randn(5, layout.dim, generator=torch.Generator().manual_seed(3),
                    dtype=torch.float64)
    _assert_log_joint(graph, model, args, layout, u, 1e-10, 1e-10, batched=False)


def _doubling(graph):
    # a rewrite that changes the value: the log density comes out doubled
    out = next(n for n in graph.graph.nodes if n.op == "output")
    with graph.graph.inserting_before(out):
        doubled = graph.graph.call_function(torch.ops.aten.mul.Tensor, (out.args[0], 2.0))
    out.args = (doubled,)
    graph.recompile()
    return 1


def _failing(graph):
    raise RuntimeError("a graph the rewrites do not understand")


@pytest.mark.parametrize("fold", [_doubling, _failing])
def test_a_failed_fold_keeps_the_graph_as_traced(monkeypatch, fold):
    import pyrovi.fast.potential as module

    monkeypatch.setattr(module, "fold_broadcasts", fold)
    args = data("logistic_regression")
    _, layout, potential = _setup(logistic_regression, args)
    graph = trace_log_density(potential, torch.zeros(layout.dim))
    for seed in range(3):
        u = torch.randn(layout.dim, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(graph(u), potential.log_density(u, True))
