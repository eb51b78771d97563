r"""The math of VSBC: posterior probabilities of the true values and a symmetry test.

Both functions are pure (numpy arrays in, numbers or arrays out); the driver that simulates
and fits lives in :mod:`pyrovi.calibration.driver`.

Posterior probability of the truth
----------------------------------
Yao, Vehtari, Simpson & Gelman (2018), *Yes, but did it work?: Evaluating variational
inference* (ICML), record for each simulation :math:`j` and each scalar component

.. math:: p_j = P_q(\theta < \theta^*_j \mid y_j),

with :math:`\theta^*_j` drawn from the prior and :math:`y_j` simulated from it.  When
:math:`q` is the exact posterior, :math:`p_j \sim \mathrm{Uniform}(0, 1)`, hence symmetric
about 1/2.  From :math:`L` draws of :math:`q`, :func:`posterior_probability` uses the
randomized rank of Talts et al. (2018), *Validating Bayesian inference algorithms with
simulation-based calibration*: the rank :math:`r` of :math:`\theta^*` among the draws (ties
broken at random) is uniform on :math:`\{0, \dots, L\}` under an exact posterior, so

.. math:: \hat p_j = \frac{r + U}{L + 1}, \qquad U \sim \mathrm{Uniform}(0, 1),

is *exactly* uniform for any :math:`L` (no Monte Carlo bias near 0 and 1, no ties, and
discrete latents are covered too).  It estimates :math:`p_j` with error
:math:`O(L^{-1/2})`.

Symmetry test
-------------
Yao et al. compare the :math:`p_j` with the :math:`1 - p_j` by a Kolmogorov-Smirnov
statistic, :math:`D = \sup_t |F_n(t) - G_n(t)|` (:math:`F_n`, :math:`G_n` the empirical CDFs
of :math:`p` and :math:`1 - p`); :func:`symmetry_test` returns that statistic (equal to
``scipy.stats.ks_2samp(p, 1 - p).statistic``).  Its p-value, however, is not the two-sample
KS p-value: the two samples are not independent (one is a function of the other), and under
symmetry :math:`\sqrt{n} D` has twice the two-sample variance at :math:`t = 1/2`, so
``ks_2samp``'s p-values are too small and a calibrated method fails too often.  Instead,
write :math:`p_j - 1/2 = s_j a_j` with signs :math:`s_j = \pm 1` and sizes :math:`a_j \ge 0`.
Then :math:`n D = \max_k |S_k|`, where :math:`S_k` sums the signs of the :math:`k` largest
:math:`a_j`; under symmetry about 1/2 the signs are independent fair coin flips, independent
of the sizes, so :math:`n D` is distributed as the maximum of :math:`|S_k|` over the first
:math:`n` steps of a simple symmetric random walk (Butler, 1969, *A test for symmetry using
the sample distribution function*, Ann. Math. Statist. 40(6)).  :func:`walk_exceedance`
computes that law exactly, so the p-value is exact at every :math:`n` (no asymptotics and
no scipy needed).
"""

from __future__ import annotations

import numpy as np

__all__ = ["posterior_probability", "symmetry_test", "walk_exceedance"]


def posterior_probability(
    draws: np.ndarray, truth: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    r"""Randomized-rank estimate of :math:`P_q(\theta < \theta^*)` for every component.

    Parameters
    ----------
    draws : numpy.ndarray
        Draws from :math:`q`, shape ``(L, *site_shape)``.
    truth : numpy.ndarray
        The true value :math:`\theta^*`, shape ``site_shape``.
    rng : numpy.random.Generator
        Source of the tie-breaking and smoothing uniforms.

    Returns
    -------
    numpy.ndarray
        Shape ``site_shape``, values in (0, 1); exactly Uniform(0, 1) when the draws are
        independent draws of the exact posterior.
    """
    draws = np.asarray(draws)
    truth = np.asarray(truth)
    if draws.shape[1:] != truth.shape:
        raise ValueError(
            f"draws of shape {draws.shape} do not match truth of shape {truth.shape}; "
            "expected draws of shape (L, *truth.shape)"
        )
    num = draws.shape[0]
    less = (draws < truth).sum(axis=0)
    equal = (draws == truth).sum(axis=0)
    shape = truth.shape
    tie_rank = np.floor(rng.random(shape) * (equal + 1))  # uniform on {0, ..., equal}
    return (less + tie_rank + rng.random(shape)) / (num + 1)


def walk_exceedance(num_steps: int, level: int) -> float:
    r""":math:`P(\max_{k \le n} |S_k| \ge m)` for a simple symmetric random walk
    :math:`S` started at 0, with :math:`n` = ``num_steps`` and :math:`m` = ``level``.

    Dynamic programming over the positions :math:`-(m-1), \dots, m-1`; the mass leaving
    the band is summed directly, so small probabilities keep full relative precision.
    Costs :math:`O(n m)`.
    """
    if level <= 0:
        return 1.0
    if level > num_steps:
        return 0.0
    prob = np.zeros(2 * level - 1)
    prob[level - 1] = 1.0
    escaped = 0.0
    for _ in range(num_steps):
        escaped += 0.5 * (prob[0] + prob[-1])
        new = np.zeros_like(prob)
        new[1:] += 0.5 * prob[:-1]
        new[:-1] += 0.5 * prob[1:]
        prob = new
    return float(min(escaped, 1.0))


def symmetry_test(p: np.ndarray) -> tuple[float, float]:
    """Test that the values ``p`` (one component over simulations) are symmetric about 1/2.

    Parameters
    ----------
    p : numpy.ndarray
        Shape ``(n,)``, values in [0, 1].

    Returns
    -------
    statistic : float
        Yao et al.'s KS distance between the empirical distributions of ``p`` and
        ``1 - p``, in [0, 1] (0: perfectly symmetric sample).
    pvalue : float
        Exact probability, under symmetry about 1/2, of a statistic at least this large
        (see the module docstring).  Values exactly equal to 1/2 carry no sign and are left
        out of the walk.
    """
    p = np.asarray(p, dtype=float).ravel()
    if p.size == 0:
        raise ValueError("p is empty; expected at least one probability")
    centred = p - 0.5
    order = np.argsort(-np.abs(centred), kind="stable")
    signs = np.sign(centred[order])
    level = int(np.max(np.abs(np.cumsum(signs)))) if signs.size else 0
    return level / p.size, walk_exceedance(int(np.count_nonzero(signs)), level)
