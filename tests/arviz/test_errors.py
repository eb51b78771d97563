"""Bad input is refused before any work, with messages that say what to do."""

import pyro
import pyro.distributions as dist
import pytest

from pyrovi.arviz import to_arviz
from pyrovi.errors import PyroviError

from ._lines import group_names


def no_data():
    pyro.sample("z", dist.Normal(0.0, 1.0))


@pytest.fixture(scope="module")
def prior_only_fit():
    import warnings

    import pyrovi

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pyrovi.VI(no_data, "meanfield", seed=0, progress=False, num_steps=3).run()


@pytest.mark.parametrize("bad", [0, -5])
def test_num_samples_below_one(meanfield, bad):
    with pytest.raises(ValueError, match=rf"num_samples must be a positive int, got {bad}"):
        to_arviz(meanfield, bad)


def test_num_samples_not_an_int(meanfield):
    with pytest.raises(TypeError, match=r"num_samples must be a positive int, got float 2.5"):
        to_arviz(meanfield, 2.5)


def test_log_likelihood_without_observed_sites(prior_only_fit):
    with pytest.raises(PyroviError, match=r"no observed site.*pass log_likelihood=False"):
        to_arviz(prior_only_fit, 10)
    idata = to_arviz(prior_only_fit, 10, log_likelihood=False)
    assert "log_likelihood" not in group_names(idata)
    assert "posterior_predictive" not in group_names(idata)
    assert "posterior" in group_names(idata)
    assert idata.posterior["z"].shape == (1, 10)


def test_not_a_result():
    with pytest.raises(TypeError, match="expects a pyrovi VIResult or EMResult"):
        to_arviz({"z": 1.0}, 10)


def test_flags_and_mappings_are_checked(meanfield):
    with pytest.raises(TypeError, match="prior must be True or False"):
        to_arviz(meanfield, 10, prior="yes")
    with pytest.raises(TypeError, match="coords must be a dict"):
        to_arviz(meanfield, 10, coords=[("schools", range(8))])


def test_keyword_only(meanfield):
    with pytest.raises(TypeError):
        to_arviz(meanfield, 10, True)  # noqa: FBT003 - posterior_predictive is keyword-only
