"""``pyrovi.compare`` / ``diagnose`` next to the export, on the installed ArviZ line: the
diagnosis stored with ``to_arviz(diagnostics=...)`` survives a netCDF round trip, and the
k-hat in the table is the PSIS k-hat of the diagnosis' own importance weights."""

import math

import numpy as np
import pytest
import torch

import pyrovi
from pyrovi.arviz import decode_attrs, to_arviz
from pyrovi.diagnostics.psis import pareto_khat

from ._lines import group_names


@pytest.fixture(scope="module")
def table(meanfield, fullrank):
    return pyrovi.compare({"meanfield": meanfield, "fullrank": fullrank},
                          num_particles=2000, seed=0)


def test_compare_rows_are_the_diagnoses(table):
    assert [r["name"] for r in table.rows] == ["meanfield", "fullrank"]
    for row in table.rows:
        diag = table.diagnostics[row["name"]]
        assert row["khat"] == diag.khat and row["elbo"] == diag.elbo
        assert row["gap"] == pytest.approx(diag.log_evidence - diag.elbo, rel=1e-9)
        assert math.isfinite(row["khat"]) and diag.num_particles == 2000
        # ELBO <= log evidence, within Monte Carlo error
        assert row["gap"] > -2 * row["gap_se"]


def test_the_table_khat_is_psis_of_the_weights(table, fullrank):
    from pyrovi.diagnostics.weights import result_log_weights

    weights = result_log_weights(fullrank, 2000, seed=0)  # the draws diagnose(seed=0) makes
    assert pareto_khat(weights.log_w.numpy()) == pytest.approx(table.rows[1]["khat"], abs=1e-9)
    torch.testing.assert_close(weights.log_w, weights.log_p - weights.log_q)


def test_a_diagnosis_exported_survives_netcdf(table, meanfield, tmp_path):
    diag = table.diagnostics["meanfield"]
    idata = to_arviz(meanfield, 40, posterior_predictive=False, diagnostics=diag)
    pyrovi.save_netcdf(idata, tmp_path / "fit.nc")
    back = pyrovi.load_netcdf(tmp_path / "fit.nc")
    assert group_names(back) == group_names(idata)
    attrs = decode_attrs(back.vi_trace.attrs)
    assert attrs["diagnostics_khat"] == diag.khat
    assert attrs["diagnostics_elbo"] == diag.elbo
    assert attrs["diagnostics_log_evidence"] == diag.log_evidence
    assert attrs["diagnostics_khat_verdict"] == diag.khat_verdict
    np.testing.assert_array_equal(back.posterior["mu"], idata.posterior["mu"])
