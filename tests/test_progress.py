"""What a fit shows while it runs (pyrovi._progress): the bar says what the convergence
rule is doing, the final line stays on screen and carries the result's own numbers, and
``progress=False`` prints nothing.  Also: ``tol=0`` runs exactly ``num_steps`` steps."""

from __future__ import annotations

import re
import warnings

import pytest
import torch

import pyrovi
from pyrovi._progress import format_count, format_estimate
from pyrovi.em import EM, gaussian_mixture_model
from pyrovi.errors import ConvergenceWarning
from tests.vi import models

FINAL_VI = re.compile(
    r"^VI (?P<family>\S+): (?P<how>.*?) after (?P<n>[\d,]+) (?P<unit>steps|L-BFGS iterations)"
    r".*, ELBO (?P<elbo>-?[\d.]+) \+- (?P<se>[\d.e-]+), (?P<secs>[\d.]+) s$"
)


def _lines(err: str) -> list[str]:
    """The lines left on screen: what follows the last carriage return of each line."""
    return [line.split("\r")[-1].strip() for line in err.split("\n") if line.split("\r")[-1].strip()]


def _final(err: str) -> str:
    return _lines(err)[-1]


def _check_final_vi(line: str, result) -> re.Match:
    m = FINAL_VI.match(line)
    assert m, line
    assert int(m["n"].replace(",", "")) == result.num_steps == len(result.elbo_trace)
    decimals = len(m["elbo"].split(".")[1])
    assert float(m["elbo"]) == pytest.approx(result.elbo, abs=0.51 * 10**-decimals)
    assert float(m["se"]) == pytest.approx(result.elbo_se, rel=0.06)
    assert float(m["secs"]) == pytest.approx(result.wall_time, abs=0.051)
    return m


# ------------------------------------------------------------------------ formatting
def test_estimates_print_to_the_precision_of_their_error():
    assert format_estimate(-500.4321, 0.0123) == "-500.432 +- 0.012"
    assert format_estimate(-500.4321, 2.5) == "-500.43 +- 2.5"
    assert format_estimate(-500.4321, 0.0) == "-500.43 +- 0"
    assert format_estimate(-500.4321, float("nan")) == "-500.43"
    assert format_estimate(-500.4321, 1e-9) == "-500.432100 +- 1e-09"
    assert format_count(1234567) == "1,234,567"


# ------------------------------------------------------------------ stochastic VI
@pytest.mark.parametrize("backend", ["svi", "compiled"])
def test_sgd_bar_follows_the_rule_and_ends_on_the_results_numbers(backend, capsys):
    y = models.normal_normal_data()
    res = pyrovi.VI(models.normal_normal, method="sgd", backend=backend, seed=0,
                    progress=True).run(y)
    err = capsys.readouterr().err
    assert res.converged and res.backend == backend
    # the bar says how the run ends (no num_steps total, which the rule never reaches)
    assert f"VI meanfield: SGD ({backend}), until the ELBO plateaus after 4 lr cuts (at most 20,000 steps)" in err
    assert "/20000" not in err
    # ... and where the rule stands, with the window's ELBO and its Monte Carlo error
    assert re.search(r"ELBO -\d+\.\d+ \+- [\d.e-]+, lr cut [0-4]/4, stalled [0-3]/3", err)
    assert "lr cut 4/4" in err  # the rule converges after the fourth cut only
    line = _final(err)
    m = _check_final_vi(line, res)
    assert m["how"] == "converged" and m["unit"] == "steps"
    assert f"(sgd, {backend})" in line


@pytest.mark.parametrize("backend", ["svi", "compiled"])
@pytest.mark.parametrize("tol", [0, None])
def test_tol_zero_runs_exactly_num_steps_at_a_constant_step_size(backend, tol, capsys):
    y = models.normal_normal_data()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # a fixed-length run does not warn
        res = pyrovi.VI(models.normal_normal, method="auto", backend=backend, tol=tol,
                        num_steps=250, seed=0, progress=True).run(y)
    assert res.backend == backend  # tol=0 asks for stochastic-gradient steps, not DADVI
    assert res.num_steps == 250 == len(res.elbo_trace)
    assert not res.converged
    assert any("DADVI was not used" in n and "tol=0" in n for n in res.notes)
    err = capsys.readouterr().err
    assert f"VI meanfield: SGD ({backend}), fixed length (tol=0)" in err
    assert "/250" in err  # here the total is known, and shown
    assert "lr cut" not in err  # no cuts: the step size stays lr
    assert "lr 0.05" in err
    line = _final(err)
    assert line.startswith("VI meanfield: ran 250 steps (sgd, " + backend + "), fixed length (tol=0), ELBO ")
    elbo = float(re.search(r"ELBO (-?[\d.]+) \+-", line)[1])
    assert elbo == pytest.approx(res.elbo, abs=0.01)


def test_compilation_is_announced_before_it_starts(monkeypatch, capsys):
    monkeypatch.setenv("PYROVI_COMPILE", "1")
    y = models.normal_normal_data()
    res = pyrovi.VI(models.normal_normal, method="sgd", backend="compiled", tol=0,
                    num_steps=100, seed=0, progress=True).run(y)
    lines = _lines(capsys.readouterr().err)
    said = [i for i, line in enumerate(lines) if "compiling the ELBO step with torch.compile" in line]
    assert said, lines
    assert lines[said[0]].startswith("VI meanfield: compiling the ELBO step with torch.compile after 0 steps")
    assert res.num_steps == 100


# ------------------------------------------------------------------------ DADVI
def test_dadvi_shows_its_iterations_and_checks_and_ends_on_the_results_numbers(capsys):
    X, y = models.regression_data()
    res = pyrovi.VI(models.regression, "fullrank", seed=0, progress=True).run(X, y)
    assert res.backend == "dadvi"
    err = capsys.readouterr().err
    assert "VI fullrank: DADVI (L-BFGS on fixed draws, then a fresh-draw check)" in err
    assert re.search(r"\d+iter .*ELBO -?\d+\.\d{4} \(fixed draws\)", err)
    m_draws = res.dadvi.num_draws
    checks = [line for line in _lines(err) if "fresh-draw check with M =" in line]
    assert checks and f"M = {m_draws} fixed draws passed" in checks[-1]
    assert f"on {format_count(res.dadvi.num_fresh)} fresh draws (antithetic pairs)" in checks[-1]
    line = _final(err)
    m = _check_final_vi(line, res)
    assert m["how"] == "converged" and m["unit"] == "L-BFGS iterations"
    assert res.num_steps == res.dadvi.num_iters
    assert f"(DADVI, M = {m_draws} fixed draws, fresh-draw check passed)" in line


def test_a_lowrank_fit_says_it_starts_from_a_fullrank_fit_and_whose_check_is_whose(capsys):
    X, y = models.regression_data()
    res = pyrovi.VI(models.regression, "lowrank", seed=0, progress=True).run(X, y)
    assert res.backend == "dadvi" and res.dadvi.start == "fullrank"
    lines = _lines(capsys.readouterr().err)
    rank = res.dadvi.rank
    said = [i for i, line in enumerate(lines) if line == (
        f"VI lowrank: lowrank start: a fullrank fit first, then the nearest rank-{rank} q")]
    start_checks = [i for i, line in enumerate(lines) if line.startswith(
        "VI lowrank: fresh-draw check of the fullrank start with M = ")]
    own_checks = [i for i, line in enumerate(lines) if line.startswith(
        f"VI lowrank: fresh-draw check with M = {res.dadvi.num_draws} fixed draws passed")]
    assert len(said) == 1 and start_checks and own_checks
    assert said[0] < start_checks[-1] < own_checks[0]


def test_restarts_are_named_and_the_run_ends_on_the_kept_ones_numbers(capsys):
    X, y = models.regression_data()
    res = pyrovi.VI(models.regression, "lowrank", seed=4, num_inits=2, progress=True).run(X, y)
    lines = _lines(capsys.readouterr().err)
    for i in (1, 2):  # each restart's own final line, under its name
        assert any(FINAL_VI.match(line.replace(f" (restart {i}/2)", "", 1))
                   for line in lines if line.startswith(f"VI lowrank (restart {i}/2): "))
    elbo = format_estimate(res.elbo, res.elbo_se)
    assert lines[-1] == (f"VI lowrank: kept restart {res.best_init + 1} of 2 (seed "
                         f"{4 + res.best_init}), ELBO {elbo}, {res.wall_time:.1f} s")


def test_dadvi_refuses_tol_zero():
    with pytest.raises(ValueError, match=r"tol=0 asks for exactly num_steps stochastic-gradient "
                                         r"steps, but method='dadvi' stops at its own gradient"):
        pyrovi.VI(models.normal_normal, method="dadvi", tol=0)


# --------------------------------------------------------------------------- EM
def _mixture_data():
    g = torch.Generator().manual_seed(0)
    return torch.cat([torch.randn(60, 2, generator=g), torch.randn(60, 2, generator=g) + 4])


def test_em_bar_and_final_line(capsys):
    x = _mixture_data()
    res = EM(gaussian_mixture_model(2), seed=0, num_inits=2, progress=True).run(x)
    err = capsys.readouterr().err
    assert "EM: restart 1/2, until |change| < tol = 0.001 per observation" in err
    assert "EM: restart 2/2, until |change| < tol = 0.001 per observation" in err
    line = _final(err)
    m = re.match(r"^EM: converged after (\d+) iterations \(best of 2 restarts: #(\d)\), "
                 r"log p\(x \| theta\) (-?[\d.]+) \(last change (\S+) per observation\), "
                 r"([\d.]+) s$", line)
    assert m, line
    assert int(m[1]) == res.num_steps == len(res.log_evidence_trace)
    assert int(m[2]) == res.best_init + 1
    assert float(m[3]) == pytest.approx(res.log_evidence, rel=1e-5)
    trace = res.log_evidence_trace
    assert float(m[4]) == pytest.approx((trace[-1] - trace[-2]) / len(x), rel=0.06)
    assert abs(float(m[4])) < 1e-3  # what the rule stopped on


@pytest.mark.parametrize("tol", [0, None])
def test_em_tol_zero_runs_exactly_num_steps(tol, capsys):
    x = _mixture_data()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        res = EM(gaussian_mixture_model(2), seed=0, tol=tol, num_steps=7, progress=True).run(x)
    assert res.num_steps == 7 == len(res.log_evidence_trace)
    assert not res.converged
    err = capsys.readouterr().err
    assert "EM: restart 1/1, fixed length (tol=0)" in err
    assert "/7" in err
    assert _final(err).startswith("EM: ran 7 iterations, fixed length (tol=0), log p(x | theta) ")


# ------------------------------------------------------------------------ silence
@pytest.mark.parametrize("kwargs", [dict(), dict(method="sgd", backend="svi"),
                                    dict(method="sgd", backend="compiled")])
def test_progress_false_prints_nothing_vi(kwargs, capsys):
    res = pyrovi.VI(models.normal_normal, seed=0, progress=False, **kwargs).run(
        models.normal_normal_data()
    )
    assert res.num_steps > 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_progress_false_prints_nothing_em(capsys):
    res = EM(gaussian_mixture_model(2), seed=0, progress=False).run(_mixture_data())
    assert res.num_steps > 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
