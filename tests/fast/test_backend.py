"""Which path a fit takes, what it says when it falls back, and reproducibility."""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import pyrovi
from tests.fast.conftest import FAST, fit
from tests.fast.models import data, linear_regression


def _run(model, *args, guide="meanfield", backend="auto", **kwargs):
    options = dict(FAST, num_steps=100)
    options.update(kwargs)
    return pyrovi.VI(model, guide, backend=backend, seed=0, **options).run(*args)


def test_auto_picks_compiled():
    result = _run(linear_regression, *data("linear_regression"), method="sgd")
    assert result.backend == "compiled"


def test_auto_method_picks_dadvi():
    result = _run(linear_regression, *data("linear_regression"), method="auto")
    assert result.backend == "dadvi"


def test_same_seed_same_result():
    a = fit("logistic_regression", "meanfield", "compiled", seed=3, num_steps=300)
    b = fit("logistic_regression", "meanfield", "compiled", seed=3, num_steps=300)
    c = fit("logistic_regression", "meanfield", "compiled", seed=4, num_steps=300)
    np.testing.assert_array_equal(a.elbo_trace, b.elbo_trace)
    for name in a.params:
        torch.testing.assert_close(a.params[name], b.params[name], rtol=0, atol=0)
    assert not np.array_equal(a.elbo_trace, c.elbo_trace)


def _discrete(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    z = pyro.sample("z", dist.Bernoulli(0.3))
    pyro.sample("x", dist.Normal(mu + 2.0 * z, 1.0), obs=x)


def _subsampled(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0], subsample_size=5) as idx:
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x[idx])


def _branching(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    scale = 1.0 if bool((mu > 0).all()) else 2.0  # control flow on a latent value
    pyro.sample("x", dist.Normal(mu, scale), obs=x)


def _random_inside(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    pyro.sample("x", dist.Normal(mu + 0.1 * torch.randn(()), 1.0), obs=x)


def _with_param(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    s = pyro.param("s", torch.tensor(1.0), constraint=dist.constraints.positive)
    pyro.sample("x", dist.Normal(mu, s), obs=x)


def _guide(x):
    loc = pyro.param("loc", torch.tensor(0.0))
    pyro.sample("mu", dist.Normal(loc, 1.0))


def _normal(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


X = torch.tensor([0.5, 1.0, 1.5])
FALLBACKS = [
    (_discrete, X[0], "meanfield", {}, "discrete latent"),
    (_subsampled, torch.randn(20), "meanfield", {}, "subsamples"),
    (_branching, X[0], "meanfield", {}, "control flow"),
    (_random_inside, X[0], "meanfield", {}, "randomness"),
    (_with_param, X[0], "meanfield", {}, "pyro.param"),
    (_normal, X, _guide, {}, "user-written guide"),
    (_normal, X, "laplace", {}, "laplace"),
    (_normal, X, "meanfield", {"optim": torch.optim.SGD}, "optimizer"),
]


@pytest.mark.parametrize("model, x, guide, kwargs, match", FALLBACKS)
def test_fallback_is_noted(model, x, guide, kwargs, match):
    result = _run(model, x, guide=guide, **kwargs)
    assert result.backend == "svi"
    notes = [n for n in result.notes if "not the compiled path" in n]
    assert len(notes) == 1 and match in notes[0], result.notes


@pytest.mark.parametrize("model, x, guide, kwargs, match", FALLBACKS[2:4])
def test_backend_compiled_refuses(model, x, guide, kwargs, match):
    with pytest.raises(ValueError, match=f"backend='compiled' cannot fit.*{match}"):
        _run(model, x, guide=guide, backend="compiled", **kwargs)


def _blows_up(x):
    """The log-density drops to -inf once mu passes 2 (the data pull mu towards 5)."""
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    pyro.factor("wall", torch.where(mu > 2.0, -torch.tensor(float("inf")), torch.tensor(0.0)))
    pyro.sample("x", dist.Normal(mu, 0.1), obs=x)


def _failure(backend):
    vi = pyrovi.VI(
        _blows_up, "delta", backend=backend, seed=0, progress=False, lr=0.05, max_skips=3
    )
    with pytest.raises(pyrovi.NonFiniteError, match="non-finite at step") as info:
        vi.run(torch.tensor(5.0))
    return info.value


def test_nonfinite_stops_like_svi():
    """The MAP path is deterministic, so both backends fail at the same step with the same
    last parameters (those after the last finite step)."""
    err, ref = _failure("compiled"), _failure("svi")
    result = err.result
    assert result.backend == "compiled"
    assert err.step == ref.step > 0
    assert len(result.elbo_trace) == err.step == len(ref.result.elbo_trace)
    assert np.isfinite(result.elbo_trace).all()
    (name, value), = result.params.items()
    assert torch.isfinite(value).all() and float(value) > 2.0
    torch.testing.assert_close(value, ref.result.params[name], atol=1e-4, rtol=1e-4)
    assert result.num_skipped == ref.result.num_skipped == 4  # max_skips=3, then stop


def test_ctrl_c_on_the_compiled_path_returns_the_result_so_far(monkeypatch):
    """Ctrl-C between two windows: the steps done are kept, the fit is marked and warned
    about by the driver; a second run of the same VI object is a full, independent run."""
    import pyrovi.fast.backend as compiled

    calls = {"n": 0}
    run_steps = compiled.run_steps

    def interrupted(state, step, n):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        run_steps(state, step, n)

    monkeypatch.setattr(compiled, "run_steps", interrupted)
    vi = pyrovi.VI(linear_regression, "meanfield", backend="compiled", seed=0,
                   **dict(FAST, num_steps=300))
    args = data("linear_regression")
    with pytest.warns(pyrovi.InterruptedFitWarning, match=r"interrupted after 100 steps"):
        first = vi.run(*args)
    assert first.backend == "compiled" and first.interrupted and first.num_steps == 100
    assert np.isfinite(first.elbo_trace).all() and np.isfinite(first.elbo)
    assert "interrupted (Ctrl-C) after 100 steps" in first.notes
    second = vi.run(*args)
    assert not second.interrupted and second.num_steps > 100
    np.testing.assert_array_equal(second.elbo_trace[:100], first.elbo_trace)


def test_plan_refuses_in_plain_words_and_train_returns_values():
    """The backend's own interface: a reason instead of a plan; an Outcome from train."""
    import pyro.infer.autoguide as autoguide

    from pyrovi._model import inspect_model
    from pyrovi._runtime import fit_context
    from pyrovi._steps import Outcome, PlateauRule, Settings

    x = torch.tensor([0.5, 1.0, 1.5])
    settings = Settings(num_steps=100, lr=0.05, window=50, rule=PlateauRule(window=50),
                        num_particles=4, clip_norm=None, max_skips=3)
    with fit_context(0, torch.device("cpu")):
        info = inspect_model(_normal, (x,), {})
        guide = autoguide.AutoNormal(_normal)
        reason = pyrovi.fast.plan(_normal, guide, (x,), {}, info, family="laplace",
                                  settings=settings)
        assert isinstance(reason, str) and "laplace" in reason
        found = pyrovi.fast.plan(_normal, guide, (x,), {}, info, family="meanfield",
                                 settings=settings)
        assert isinstance(found, pyrovi.fast.Plan)
        outcome = pyrovi.fast.train(found, settings)
    assert isinstance(outcome, Outcome)
    assert len(outcome.trace) == 100 and not outcome.interrupted and outcome.nonfinite is None
    assert np.isfinite(outcome.trace).all() and outcome.num_skipped == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_compiled_agrees_with_cpu():
    cpu = fit("logistic_regression", "meanfield", "compiled", seed=0)
    gpu = fit("logistic_regression", "meanfield", "compiled", seed=0, device="cuda")
    assert gpu.backend == "compiled"
    assert gpu.params["AutoNormal.locs.w"].device.type == "cuda"
    tol = 3 * np.hypot(cpu.elbo_se, gpu.elbo_se) + 0.05
    assert abs(cpu.elbo - gpu.elbo) < tol


def _matmul_regression(X, y):
    """``X @ w``: does not broadcast over a leading particle dimension."""
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[1], dtype=X.dtype), 1.0).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal(X @ w, 0.5), obs=y)


def _broadcast_regression(X, y):
    """The same model written to broadcast."""
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[1], dtype=X.dtype), 1.0).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal((X * w).sum(-1), 0.5), obs=y)


def test_a_model_that_does_not_broadcast_takes_the_compiled_path_with_the_same_steps():
    """The compiled step batches one point's log density with vmap, so ``X @ w`` needs no
    particle loop: same seed, same draws, the same trajectory as the broadcasting form."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(30, 3, generator=g, dtype=torch.float64)
    y = X @ torch.tensor([1.0, -0.5, 0.2], dtype=torch.float64) + 0.5 * torch.randn(
        30, generator=g, dtype=torch.float64
    )
    plain = _run(_matmul_regression, X, y, method="sgd", num_particles=4)
    bcast = _run(_broadcast_regression, X, y, method="sgd", num_particles=4)
    assert plain.backend == bcast.backend == "compiled"
    assert not plain.vectorized and bcast.vectorized
    np.testing.assert_allclose(plain.elbo_trace, bcast.elbo_trace, rtol=1e-9)
    for name in bcast.params:
        torch.testing.assert_close(plain.params[name], bcast.params[name])
