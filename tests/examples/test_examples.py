"""Smoke-and-math tests of the examples/ scripts: each runs with ``quick=True`` and its
returned numbers are checked against what the script claims."""

from __future__ import annotations

import importlib.util
import math
import pathlib
import warnings

import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, **kwargs) -> dict:
    path = EXAMPLES / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"pyrovi_example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with warnings.catch_warnings():
        # quick runs stop before VI's convergence rule is met, on purpose
        warnings.filterwarnings("ignore", message="(DADVI|VI) stopped at num_steps")
        return module.main(quick=True, **kwargs)


def test_gaussian_mixture_matches_sklearn():
    out = run_example("01_gaussian_mixture")
    assert out["em_avg_loglik"] == pytest.approx(out["sklearn_avg_loglik"], rel=1e-4)
    np.testing.assert_allclose(out["em_means"], out["sklearn_means"], atol=1e-3)
    # variational Bayes: same clusters as sklearn's BayesianGaussianMixture (priors differ)
    assert out["vb_means_max_abs_diff"] < 0.2
    np.testing.assert_allclose(out["vb_weights"], out["bgm_weights"], atol=0.05)
    assert out["vb_avg_loglik"] == pytest.approx(out["bgm_avg_loglik"], abs=0.05)


def test_linear_regression_gaps():
    out = run_example("02_linear_regression")
    assert out["log_evidence"] == pytest.approx(out["log_evidence_textbook"], abs=1e-6)
    gap, se = out["gap"], out["gap_se"]
    for name in gap:  # the ELBO is a lower bound, up to Monte Carlo error
        assert gap[name] > -4 * se[name], name
    assert gap["fullrank"] < gap["meanfield"] - 1.0


def test_factor_analysis_matches_sklearn():
    out = run_example("03_factor_analysis")
    assert out["fa_avg_loglik"] == pytest.approx(out["sklearn_fa_avg_loglik"], rel=1e-6)
    assert out["fa_cov_max_abs_diff"] < 1e-4
    assert out["fa_monotone"]
    np.testing.assert_allclose(out["fa_noise_variance"], out["sklearn_fa_noise_variance"],
                               rtol=1e-3)
    # PPCA: EM reaches the closed-form maximum; sklearn's PCA uses the n - 1 covariance
    assert out["ppca_avg_loglik"] == pytest.approx(out["ppca_closed_form_avg_loglik"],
                                                   rel=1e-8)
    assert out["ppca_noise_variance"] == pytest.approx(
        out["pca_noise_variance"] * (out["n"] - 1) / out["n"], rel=1e-6)
    assert out["ppca_avg_loglik"] >= out["pca_avg_loglik"]
    assert out["ppca_cov_max_abs_diff"] < 1e-6
    assert out["fa_avg_loglik"] > out["ppca_avg_loglik"]


def test_eight_schools_centred_is_worse():
    out = run_example("04_eight_schools")
    gap = out["gap"]
    for family in ("meanfield", "fullrank"):
        assert gap[f"centred {family}"] > gap[f"non-centred {family}"] + 1.0
    assert all(g > -4 * out["gap_se"][k] for k, g in gap.items())
    assert all(math.isfinite(k) for k in out["khat"].values())
    # the centred guides cannot reach small tau
    tau = out["tau_quantiles"]
    assert tau["centred meanfield"][0] > 2 * tau["non-centred meanfield"][0]


def test_logistic_regression_against_nuts(tmp_path):
    out = run_example("05_logistic_regression", out=str(tmp_path))
    ratio = out["sd_ratio"]
    assert ratio["meanfield"] < 0.7  # meanfield understates the spread
    assert ratio["fullrank"] == pytest.approx(1.0, abs=0.2)
    assert out["mean_error"]["fullrank"] < 0.6
    assert pathlib.Path(out["png"]).stat().st_size > 10_000
    # every model's intervals are drawn, in its own colour of the default cycle (an ArviZ
    # 1.x forest plot of draws padded to a common length is blank but for its labels)
    import matplotlib.colors as mcolors
    import matplotlib.image as mimage

    image = mimage.imread(out["png"])[..., :3]
    for colour in ("C0", "C1", "C2", "C3"):  # NUTS, meanfield, lowrank:2, fullrank
        near = np.abs(image - np.array(mcolors.to_rgb(colour))).max(-1) < 0.05
        assert near.sum() > 200, colour


def test_tomography_meanfield_understates_uncertainty():
    out = run_example("06_tomography")
    assert out["exact_pair_corr"] < -0.5
    # meanfield: conditional variances instead of marginal ones, no correlation
    assert out["meanfield_sd_ratio"] == pytest.approx(out["meanfield_optimum_sd_ratio"],
                                                      abs=0.1)
    assert out["meanfield_sd_ratio"] < 0.6
    assert abs(out["meanfield_pair_corr"]) < 0.1
    assert out["gap"]["meanfield"] == pytest.approx(out["meanfield_optimum_gap"], rel=0.15)
    # fullrank: the exact posterior
    assert out["fullrank_sd_ratio"] == pytest.approx(1.0, abs=0.1)
    assert out["fullrank_pair_corr"] == pytest.approx(out["exact_pair_corr"], abs=0.15)
    assert out["gap"]["fullrank"] < 1.0


def test_gradient_estimators_variances():
    out = run_example("07_gradient_estimators")
    var = out["grad_var_logits"]
    assert var["score function"] > 5 * var["enumeration"]
    assert out["grad_bias"]["score function"] < 3.0  # unbiased, up to Monte Carlo error
    elbo, log_px = out["elbo"], out["log_evidence"]
    assert all(e < log_px + 0.05 for e in elbo.values())
    assert elbo["enumeration"] > elbo["score function"]
    assert out["gradient_estimators"]["score function"]["z"] == "score-function"
    assert "enumerated" in out["gradient_estimators"]["enumeration"]["z"]
