"""Fault injection: a NaN, an exception or Ctrl-C at step k; and the silent Pyro cases."""

import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import pyrovi
from pyrovi.errors import FitError, InterruptedFitWarning, ModelError, ModelWarning
from pyrovi.vi.checks import SITE_SET_PROBES
from tests.vi import models

pytestmark = pytest.mark.filterwarnings("ignore::pyrovi.errors.ConvergenceWarning")
FAST = dict(progress=False, num_steps=200, elbo_particles=100, seed=0, backend="svi",
            method="sgd")
# before step 0 the model runs to inspect it, to compare its site set over prior runs (and
# one under a particle plate), to set up the autoguide's prototype and to check that it
# broadcasts over particles
CALLS_BEFORE_TRAINING = 3 + SITE_SET_PROBES + 1


class Faulty:
    """A normal-normal model that injects ``fault`` at one training step (picklable, so
    that it can be checkpointed)."""

    def __init__(self, fault, at_step):
        self.fault, self.at_step, self.calls = fault, at_step, 0

    def __call__(self, y):
        step = self.calls - CALLS_BEFORE_TRAINING
        self.calls += 1
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=y.dtype), 3.0))
        if step == self.at_step:
            if self.fault == "nan":
                mu = mu * float("nan")
            else:
                raise self.fault
        with pyro.plate("data", y.shape[0]):
            pyro.sample("y", dist.Normal(mu, 2.0, validate_args=False), obs=y)


faulty = Faulty


def test_a_nan_at_one_step_is_skipped_and_counted():
    y = models.normal_normal_data()
    result = pyrovi.VI(faulty("nan", 50), **FAST).run(y)
    assert result.num_skipped == 1
    # the skipped step is recorded as NaN, every other step is finite
    assert int(np.isnan(result.elbo_trace).sum()) == 1
    assert int(np.flatnonzero(np.isnan(result.elbo_trace))[0]) == 50
    assert result.num_steps == 200
    mean, sd = models.normal_normal_posterior(y)
    assert float(result.params["AutoNormal.locs.mu"]) == pytest.approx(mean, abs=0.3 * sd)


def test_with_max_skips_zero_the_first_nan_stops_the_fit():
    y = models.normal_normal_data()
    with pytest.raises(pyrovi.NonFiniteError, match=r"the ELBO became non-finite at step 30 and stayed so for 1 steps \(max_skips=0\)") as info:
        pyrovi.VI(faulty("nan", 30), max_skips=0, **FAST).run(y)
    assert info.value.step == 30
    assert info.value.result.num_steps == 30


def test_an_exception_in_the_model_keeps_the_result_and_checkpoint(tmp_path):
    y = models.normal_normal_data()
    path = tmp_path / "fit.ckpt"
    model = faulty(RuntimeError("disk cable pulled"), 70)
    with pytest.raises(FitError, match=r"raised RuntimeError at step 70: disk cable pulled") as info:
        pyrovi.VI(model, checkpoint=path, checkpoint_every=1000, **FAST).run(y)
    partial = info.value.result
    assert partial.num_steps == 70
    assert all(math.isfinite(v) for v in partial.elbo_trace)
    # the failure checkpoint lets the fit continue (a fresh model without the fault)
    vi = pyrovi.resume(path, model=models.normal_normal)
    resumed = vi.run(y)
    assert resumed.num_steps == 200
    assert (resumed.elbo_trace[:70] == partial.elbo_trace).all()


def test_ctrl_c_returns_the_result_so_far(tmp_path):
    y = models.normal_normal_data()
    model = faulty(KeyboardInterrupt(), 40)
    with pytest.warns(InterruptedFitWarning, match=r"interrupted after 40 steps"):
        result = pyrovi.VI(model, **FAST).run(y)
    assert result.interrupted and not result.converged
    assert result.num_steps == 40
    assert math.isfinite(result.elbo)


def test_a_second_run_after_ctrl_c_is_a_full_independent_run():
    """The VI object holds configuration only: an interrupted run leaves nothing behind."""
    y = models.normal_normal_data()
    vi = pyrovi.VI(faulty(KeyboardInterrupt(), 40), **FAST)
    with pytest.warns(InterruptedFitWarning, match=r"interrupted after 40 steps"):
        first = vi.run(y)
    assert first.interrupted and first.num_steps == 40
    with warnings.catch_warnings():
        warnings.simplefilter("error", InterruptedFitWarning)
        second = vi.run(y)  # the model's fault lies behind it now
    assert not second.interrupted and second.num_steps == 200
    assert not [n for n in second.notes if "interrupted" in n]
    reference = pyrovi.VI(models.normal_normal, **FAST).run(y)
    np.testing.assert_array_equal(second.elbo_trace, reference.elbo_trace)


def test_ctrl_c_with_a_checkpoint_writes_it_and_says_so(tmp_path):
    y = models.normal_normal_data()
    path = tmp_path / "fit.ckpt"
    model = faulty(KeyboardInterrupt(), 40)
    with pytest.warns(InterruptedFitWarning, match=r"after 40 steps.*checkpoint .* written"):
        result = pyrovi.VI(model, checkpoint=path, checkpoint_every=1000, **FAST).run(y)
    assert result.interrupted
    resumed = pyrovi.resume(path, model=models.normal_normal).run(y)
    assert resumed.num_steps == 200 and not resumed.interrupted
    np.testing.assert_array_equal(resumed.elbo_trace[:40], result.elbo_trace)


# ------------------------------------------------------------- silent cases of Pyro
def regression_with_optional_y(X, y=None):
    w = pyro.sample("w", dist.Normal(torch.zeros(2, dtype=X.dtype), 1.0).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal((X * w).sum(-1), 0.5), obs=y)


def test_obs_none_at_an_observed_site_warns_naming_the_site():
    X, y = models.regression_data()
    with pytest.warns(ModelWarning, match=r"site 'y' of model 'regression_with_optional_y' is latent in this call \(obs=None\)"):
        pyrovi.VI(regression_with_optional_y, **FAST).run(X)


def plate_model(y):
    mu = pyro.sample("mu", dist.Normal(torch.zeros(5, dtype=y.dtype), 1.0).to_event(1))
    with pyro.plate("groups", 5):
        theta = pyro.sample("theta", dist.Normal(mu, 1.0))
        pyro.sample("y", dist.Normal(theta, 1.0), obs=y)


def small_plate_guide(y):
    loc = pyro.param("loc", torch.zeros(5, dtype=y.dtype))
    pyro.sample("mu", dist.Normal(loc, 1.0).to_event(1))
    with pyro.plate("groups", 3):
        pyro.sample("theta", dist.Normal(torch.zeros(3, dtype=y.dtype), 1.0))


def test_guide_plate_of_another_size_is_refused_naming_plate_and_sizes():
    y = torch.zeros(5, dtype=torch.float64)
    with pytest.raises(ModelError, match=r"plate 'groups' has size 3 in guide 'small_plate_guide' but 5 in the model"):
        pyrovi.VI(plate_model, small_plate_guide, **FAST).run(y)


def scale_model(y):
    sigma = pyro.sample("sigma", dist.HalfNormal(torch.tensor(1.0, dtype=y.dtype)))
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Normal(0.0, sigma), obs=y)


def real_valued_guide(y):
    loc = pyro.param("loc", torch.tensor(0.5, dtype=y.dtype))
    pyro.sample("sigma", dist.Normal(loc, 0.1))


def test_guide_outside_the_model_support_is_refused_naming_the_site():
    y = torch.randn(10, dtype=torch.float64)
    with pytest.raises(ModelError, match=r"site 'sigma': guide 'real_valued_guide' samples from Normal with support Real\(\), but the model's HalfNormal has support GreaterThanEq"):
        pyrovi.VI(scale_model, real_valued_guide, **FAST).run(y)


# ------------------------------------------------------------------- restarts (num_inits)
class FaultyAtCall(Faulty):
    """``Faulty`` counting calls over every restart: the fault comes at call ``at_call``."""

    def __init__(self, fault, at_call):
        super().__init__(fault, at_call - CALLS_BEFORE_TRAINING)


def _calls_per_run(y):
    counter = Faulty(None, -10**9)  # never
    pyrovi.VI(counter, **FAST).run(y)
    return counter.calls


def test_a_failing_restart_is_dropped_with_a_warning_and_a_note():
    y = models.normal_normal_data()
    model = FaultyAtCall(RuntimeError("disk cable pulled"),
                         _calls_per_run(y) + CALLS_BEFORE_TRAINING + 30)  # restart 2, step 30
    with pytest.warns(pyrovi.FallbackWarning, match=r"VI restart 2/3 failed \(FitError: .*"
                      r"raised RuntimeError at step 30: disk cable pulled\); it is dropped; the restarts go on"):
        result = pyrovi.VI(model, num_inits=3, **FAST).run(y)
    singles = [pyrovi.VI(models.normal_normal, **{**FAST, "seed": s}).run(y) for s in (0, 2)]
    assert math.isnan(result.elbo_inits[1])
    assert (result.elbo_inits[0], result.elbo_inits[2]) == (singles[0].elbo, singles[1].elbo)
    assert result.best_init == (0 if singles[0].elbo >= singles[1].elbo else 2)
    assert any(n.startswith("restart 2 (seed 1) failed and was dropped: FitError")
               for n in result.notes)
    assert not result.interrupted


def test_when_every_restart_fails_the_last_error_is_raised():
    y = models.normal_normal_data()

    class Always(Faulty):  # every restart fails at its step 30
        def __call__(self, y):
            self.calls %= CALLS_BEFORE_TRAINING + 30 + 1
            return super().__call__(y)

    with pytest.warns(pyrovi.FallbackWarning, match=r"VI restart 1/2 failed"), pytest.raises(
            FitError, match=r"raised RuntimeError at step 30: disk cable pulled"):
        pyrovi.VI(Always(RuntimeError("disk cable pulled"), 30), num_inits=2, **FAST).run(y)


def test_ctrl_c_ends_the_restarts_and_returns_the_best_so_far():
    y = models.normal_normal_data()
    model = FaultyAtCall(KeyboardInterrupt(), _calls_per_run(y) + CALLS_BEFORE_TRAINING + 40)
    with pytest.warns(InterruptedFitWarning, match=r"interrupted after 40 steps"):
        result = pyrovi.VI(model, num_inits=3, **FAST).run(y)
    assert result.interrupted and len(result.elbo_inits) == 2  # restart 3 never ran
    first = pyrovi.VI(models.normal_normal, **FAST).run(y)
    assert result.elbo_inits[0] == first.elbo
    assert result.best_init == max(range(2), key=lambda i: result.elbo_inits[i])
    assert "interrupted (Ctrl-C) in restart 2/3: the restarts after it were not run" in result.notes
