"""The ArviZ line is the installed ``arviz``'s major version, whatever else is importable."""

import sys
import types

import arviz as az
import numpy as np
import pytest

from pyrovi.arviz import backend, to_arviz


@pytest.mark.parametrize(
    "version, line",
    [("0.20.0", 0), ("0.23.4", 0), ("0.23.0.dev0", 0), ("1.0.0", 1), ("1.3.0", 1),
     ("1.0.0rc1", 1), ("2.1", 1)],
)
def test_line_of_version(version, line):
    assert backend.line_of_version(version) == line


def test_an_unreadable_version_is_refused():
    with pytest.raises(ValueError, match="major version of ArviZ"):
        backend.line_of_version("dev")


def test_the_installed_arviz_decides():
    assert backend.arviz_line() == backend.line_of_version(az.__version__)


@pytest.fixture
def fresh_line(monkeypatch):
    """``arviz_line`` recomputed inside the test and again after it."""
    backend.arviz_line.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    backend.arviz_line.cache_clear()


@pytest.mark.parametrize("version, line", [("0.23.4", 0), ("1.3.0", 1)])
def test_arviz_base_alone_does_not_switch_the_line(fresh_line, version, line):
    # arviz-base left behind next to arviz<1 (or missing next to arviz>=1) changes nothing
    fresh_line.setitem(sys.modules, "arviz_base", types.ModuleType("arviz_base"))
    fresh_line.setattr(az, "__version__", version)
    assert backend.arviz_line() == line


def test_the_export_is_the_installed_lines_container(meanfield):
    idata = to_arviz(meanfield, 10, posterior_predictive=False)
    if backend.arviz_line() == 1:
        import xarray as xr

        assert isinstance(idata, xr.DataTree)
    else:
        assert isinstance(idata, az.InferenceData)


@pytest.mark.skipif(backend.arviz_line() == 1, reason="the ArviZ 0.2x situation")
def test_arviz_0x_with_arviz_base_left_installed_still_works(fresh_line, meanfield):
    fresh_line.setitem(sys.modules, "arviz_base", types.ModuleType("arviz_base"))
    idata = to_arviz(meanfield, 200, posterior_predictive=False)
    assert isinstance(idata, az.InferenceData)
    summary = az.summary(idata, kind="stats")
    assert summary.loc["mu", "mean"] == pytest.approx(
        float(np.mean(idata.posterior["mu"].values)), abs=1e-3)
