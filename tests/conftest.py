"""Shared test set-up: one torch thread (the CI machine has two shared cores), quiet plots."""

import os

import matplotlib
import pyro
import pytest
import torch

matplotlib.use("Agg")
torch.set_num_threads(1)
# The compiled VI path traces its step once per fit and, by default, compiles it with
# torch.compile after 2,000 steps (2-8 s). The suite runs the traced step uncompiled;
# tests/fast/test_step.py compiles it explicitly once.
os.environ.setdefault("PYROVI_COMPILE", "0")


@pytest.fixture(autouse=True)
def _clean_pyro_state():
    """Each test starts with an empty global parameter store and float32 default dtype."""
    pyro.clear_param_store()
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)
    pyro.clear_param_store()


# Tests that fail on the ArviZ 1.x line (`make test-py312`) because of code outside the
# ArviZ backend (the test itself or an example still uses an ArviZ 0.2x API). Each is marked
# xfail there (not strict: a fix shows as XPASS; then delete its entry here) with the cause
# and the fix. "norun" entries are not run at all: they fail only after minutes of work.
_ARVIZ1_GROUPS = ("a DataTree's groups is a property (a tuple of paths), not a method: "
                  "use the children's names (list(idata.children)) on ArviZ 1.x")
_ARVIZ1_XFAIL = {
    "tests/arviz/test_arviz_functions.py::test_plot_posterior_and_trace":
        "az.plot_posterior is gone in ArviZ 1.x (arviz-plots: az.plot_dist, az.plot_trace, "
        "az.plot_trace_dist), and plots return a PlotCollection, not axes",
    "tests/arviz/test_arviz_functions.py::test_plot_forest":
        "az.plot_forest returns a PlotCollection in ArviZ 1.x, not an array of axes",
    "tests/arviz/test_arviz_functions.py::test_loo_and_compare_across_guide_families":
        "arviz-stats' ELPDData has elpd / p, not elpd_loo / p_loo (az.compare: 'elpd')",
    "tests/arviz/test_arviz_functions.py::test_netcdf_round_trip_loses_nothing": _ARVIZ1_GROUPS,
    "tests/arviz/test_errors.py::test_log_likelihood_without_observed_sites": _ARVIZ1_GROUPS,
    "tests/arviz/test_groups.py::test_groups_and_attributes": _ARVIZ1_GROUPS,
    "tests/arviz/test_completeness.py::test_concat_along_chain":
        "ArviZ 1.x has no az.concat (xarray.concat on the DataTree's groups instead)",
    "tests/arviz/test_completeness.py::test_to_dataframe_and_extract":
        "a DataTree has no to_dataframe (group.to_dataframe() on 1.x)",
    "tests/arviz/test_completeness.py::test_attributes_are_plain_values_in_memory": _ARVIZ1_GROUPS,
    "tests/arviz/test_completeness.py::test_reserved_names_are_renamed_with_a_warning":
        _ARVIZ1_GROUPS,
    "tests/arviz/test_completeness.py::test_subsampled_local_latents_say_why_not":
        _ARVIZ1_GROUPS,
    "tests/arviz/test_completeness.py::test_corrected_loo_flags_fewer_bad_k_on_eight_schools":
        "arviz-stats' ELPDData has elpd / p, not elpd_loo / p_loo",
    "tests/arviz/test_completeness.py::test_corrected_loo_equals_plain_loo_on_an_exact_posterior":
        "arviz-stats' ELPDData has elpd / p, not elpd_loo / p_loo",
    "tests/calibration/test_calibration.py::test_to_xarray_and_arviz_dict":
        "az.from_dict takes the groups as one dict in ArviZ 1.x: "
        "az.from_dict({'posterior': arrays}, dims=...)",
}
_ARVIZ1_NORUN = {
    "tests/examples/test_examples.py::test_logistic_regression_against_nuts":
        "examples/05_logistic_regression.py calls az.from_pyro (gone in ArviZ 1.x) after "
        "its NUTS run, and uses az.plot_forest's axes",
}


def pytest_collection_modifyitems(config, items):
    from pyrovi.arviz.backend import arviz_line

    if arviz_line() != 1:
        return
    for item in items:
        test = item.nodeid.split("[", 1)[0]
        if test in _ARVIZ1_XFAIL:
            item.add_marker(pytest.mark.xfail(reason=f"ArviZ 1.x: {_ARVIZ1_XFAIL[test]}"))
        elif test in _ARVIZ1_NORUN:
            item.add_marker(pytest.mark.xfail(reason=f"ArviZ 1.x: {_ARVIZ1_NORUN[test]}",
                                              run=False))
