"""`pyrovi demo`: what it writes, what it refuses, and that an interrupted run keeps its fits."""

import contextlib
import io
import os
import re

import arviz as az
import pytest

from pyrovi import cli, demo


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    err = io.StringIO()  # the progress bars and final lines go to stderr
    with contextlib.redirect_stderr(err):
        code = cli.main(["demo", "--quick", "--out", str(out)])
    return code, out, err.getvalue()


def test_quick_demo_shows_progress_and_a_final_line_for_every_fit(quick_run):
    code, _, err = quick_run
    assert code == 0
    lines = [part.split("\r")[-1].strip() for part in err.split("\n")]
    final = [line for line in lines if re.match(
        r"^(VI \S+|EM): (converged|stopped|ran) .*, \d+\.\d s$", line)]
    # mixture: EM and VB; regression: meanfield, fullrank; eight schools: the same two
    assert len(final) == 6, final
    assert sum(line.startswith("EM: ") for line in final) == 1
    dadvi = [line for line in final if "L-BFGS iterations (DADVI" in line]
    assert len(dadvi) >= 2, final  # the default method for the Gaussian families
    assert all(re.search(r", ELBO -?\d+\.\d+ \+- ", line) for line in final if line[:2] == "VI")
    assert "lr cut" in err or "fixed draws" in err  # the live bars showed the rule's stage


def test_quick_demo_writes_fits_plots_and_report(quick_run, capsys):
    code, out, _ = quick_run
    assert code == 0
    files = set(os.listdir(out))
    for case in ("mixture", "regression", "eight_schools"):
        assert f"{case}_elbo.png" in files and f"{case}_gap.png" in files
    assert {"mixture_em.nc", "mixture_vb.nc", "regression_meanfield.nc",
            "regression_fullrank.nc", "eight_schools_meanfield.nc",
            "eight_schools_fullrank.nc"} <= files
    idata = az.from_netcdf(out / "regression_fullrank.nc")
    assert idata.posterior["w"].shape == (4, 50, 10)  # 200 i.i.d. draws as 4 chains
    assert "diagnostics_gap" in idata.vi_trace.attrs
    bracket = idata.vi_trace.attrs["diagnostics_bracket"]  # encoded on write
    assert "pyrovi-json:" in bracket and '"lower_is": "bound"' in bracket
    assert idata.error_bounds["w"].dims == ("bound", "w_dim_0")
    report = (out / "report.md").read_text()
    assert report.count("**Verdict:**") == 3
    # each fit's bracket, error bounds and verdict, said to be bounds or estimates
    assert report.count("Bounds and estimates, fit by fit:") == 3
    for label in ("meanfield", "fullrank"):
        line = next(r for r in report.splitlines() if r.startswith(f"- `{label}`: log p(x)"))
        assert "(bound), " in line and "by bidirectional AIS" in line
    assert report.count("sd of q (bounds, ") >= 4
    assert "- `em (diag GMM)`: log p(x | theta) exact (q is the exact posterior)" in report
    assert "- `vb meanfield`: no bracket (enumerated discrete latents)" in report
    assert report.count("*Means: ") + report.count("*Means, sds and tails: trust") == 6
    assert "regression_gap.png" in report


def test_demo_refuses_a_folder_with_files_unless_forced(tmp_path):
    (tmp_path / "old.txt").write_text("keep me")
    with pytest.raises(SystemExit, match=r"already holds 1 file\(s\) \(e.g. 'old.txt'\).*pass --force"):
        cli.main(["demo", "--quick", "--out", str(tmp_path)])
    assert (tmp_path / "old.txt").read_text() == "keep me"


def test_demo_refuses_an_output_path_that_is_a_file(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(SystemExit, match=r"is a file, not a folder"):
        cli.main(["demo", "--out", str(target)])


def test_an_interrupted_demo_keeps_the_fits_it_finished(tmp_path, monkeypatch):
    def interrupted(quick, seed, device):
        raise KeyboardInterrupt

    regression = next(c for c in demo.CASES if c.name == "regression")
    stop = demo.DemoCase("stop", "interrupted", interrupted, lambda *a: None)
    monkeypatch.setattr(demo, "CASES", (regression, stop))
    assert demo.run_demo(out=str(tmp_path), quick=True) == 130
    idata = az.from_netcdf(tmp_path / "regression_meanfield.nc")
    assert idata.posterior["w"].shape[-1] == 10
    assert "regression" in (tmp_path / "report.md").read_text()
