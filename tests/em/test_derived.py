"""Closed-form M-steps read off a user's own Pyro model (pyrovi.em.derived)."""

import itertools
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import config_enumerate
from sklearn.datasets import load_iris
from sklearn.exceptions import ConvergenceWarning as SkConvergenceWarning
from sklearn.mixture import GaussianMixture

import pyrovi.em.engines as engines
from pyrovi.em import EM, LBFGSMStep
from pyrovi.em.derived import propose
from pyrovi.em.estep import enum_e_step
from pyrovi.em.mstep import try_proposal

K = 3


def _iris():
    return torch.as_tensor(load_iris().data)


def user_gmm(x, init):
    """A Gaussian mixture as a Pyro user writes it: pyro.param weights, locs and
    scale_tril (started at the identity), an enumerated assignment."""
    n, d = x.shape
    weights = pyro.param("weights", torch.ones(K) / K, constraint=constraints.simplex)
    locs = pyro.param("locs", init.clone())
    tril = pyro.param("scale_tril", torch.eye(d).expand(K, d, d).clone(),
                      constraint=constraints.lower_cholesky)
    with pyro.plate("data", n):
        z = pyro.sample("z", dist.Categorical(weights), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.MultivariateNormal(locs[z], scale_tril=tril[z]), obs=x)


def _count_lbfgs(monkeypatch):
    calls = []
    real = engines.maximize_q

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(engines, "maximize_q", counted)
    return calls


def test_user_gmm_is_scikit_learn_em(monkeypatch):
    # from the same initial values, EM on the user's model with the derived M-step takes
    # scikit-learn's EM steps exactly, and L-BFGS never runs
    x = _iris()
    init = x[torch.tensor([0, 50, 100])]
    calls = _count_lbfgs(monkeypatch)
    res = EM(user_gmm, num_steps=25, tol=0, progress=False).run(x, init)
    gm = GaussianMixture(
        K, covariance_type="full", tol=0.0, max_iter=25, reg_covar=0.0,
        weights_init=np.ones(K) / K, means_init=init.numpy(),
        precisions_init=np.stack([np.eye(4)] * K),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkConvergenceWarning)
        gm.fit(x.numpy())
    assert calls == []
    np.testing.assert_allclose(res.params["locs"].numpy(), gm.means_, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(res.params["weights"].numpy(), gm.weights_, rtol=1e-8)
    cov = res.params["scale_tril"] @ res.params["scale_tril"].transpose(-1, -2)
    np.testing.assert_allclose(cov.numpy(), gm.covariances_, rtol=1e-7, atol=1e-10)
    assert res.log_evidence == pytest.approx(gm.score(x.numpy()) * len(x), abs=1e-7)
    assert np.all(np.diff(np.append(res.log_evidence_trace, res.log_evidence)) >= -1e-9)


def test_lbfgs_alone_reaches_the_same_fixed_point():
    # the derived M-step is an exact maximiser of Q: L-BFGS alone (derived=False) converges
    # to the same parameters, slower
    x = _iris()
    init = x[torch.tensor([0, 50, 100])]
    fast = EM(user_gmm, num_steps=400, tol=1e-10, progress=False).run(x, init)
    slow = EM(user_gmm, num_steps=400, tol=1e-10, progress=False,
              lbfgs=LBFGSMStep(derived=False)).run(x, init)
    assert fast.converged and slow.converged
    assert fast.log_evidence == pytest.approx(slow.log_evidence, abs=1e-4)
    np.testing.assert_allclose(fast.params["locs"], slow.params["locs"], atol=1e-3)


def hmm(ys):
    init = pyro.param("init", torch.tensor([0.6, 0.4]), constraint=constraints.simplex)
    trans = pyro.param("trans", torch.tensor([[0.7, 0.3], [0.4, 0.6]]),
                       constraint=constraints.simplex)
    locs = pyro.param("locs", torch.tensor([-0.5, 0.5]))
    scale = pyro.param("scale", torch.tensor(2.0), constraint=constraints.positive)
    z = pyro.sample("z_0", dist.Categorical(init))
    pyro.sample("y_0", dist.Normal(locs[z], scale), obs=ys[0])
    for t in pyro.markov(range(1, ys.shape[0])):
        z = pyro.sample(f"z_{t}", dist.Categorical(trans[z]))
        pyro.sample(f"y_{t}", dist.Normal(locs[z], scale), obs=ys[t])


YS = torch.tensor([-2.1, -1.7, -2.4, 1.9, 2.2, 1.5, -1.8, 2.0, 1.7, -2.2])


def _brute_force_moments(params, ys):
    """Baum-Welch's M-step by brute force over every hidden path: expected counts of the
    first state and of the transitions, weighted means and the pooled variance."""
    init, trans, locs, scale = (params[k] for k in ("init", "trans", "locs", "scale"))
    paths, lps = [], []
    for zs in itertools.product(range(2), repeat=len(ys)):
        lp = init[zs[0]].log()
        for t in range(1, len(ys)):
            lp = lp + trans[zs[t - 1], zs[t]].log()
        lp = lp + dist.Normal(locs[list(zs)], scale).log_prob(ys).sum()
        paths.append(zs)
        lps.append(lp)
    post = torch.softmax(torch.stack(lps), 0)
    n0, nt, w, wy = torch.zeros(2), torch.zeros(2, 2), torch.zeros(2), torch.zeros(2)
    for p, zs in zip(post, paths, strict=True):
        n0[zs[0]] += p
        for t in range(1, len(ys)):
            nt[zs[t - 1], zs[t]] += p
        for t, z in enumerate(zs):
            w[z] += p
            wy[z] += p * ys[t]
    locs_new = wy / w
    var = sum(p * ((ys - locs_new[list(zs)]) ** 2).sum() for p, zs in zip(post, paths, strict=True))
    return {"init": n0 / n0.sum(), "trans": nt / nt.sum(-1, keepdim=True), "locs": locs_new,
            "scale": (var / len(ys)).sqrt()}


def test_markov_chain_statistics_are_pooled_over_steps():
    # the transition matrix is used at nine sites: its update pools their expected counts
    # (Baum-Welch), checked against the brute-force sum over all 2^10 hidden paths
    pyro.clear_param_store()
    hmm(YS)
    store = pyro.get_param_store()
    params = {k: store[k].detach() for k in store.keys()}
    estep = enum_e_step(hmm, 0, (YS,), {})
    proposals = propose(estep.trace, estep.weights, params)
    expected = _brute_force_moments(params, YS)
    assert set(proposals) == set(expected)
    for name, value in expected.items():
        assert len(proposals[name]) == 1, name
        np.testing.assert_allclose(proposals[name][0].value, value, rtol=1e-9, err_msg=name)


def test_hmm_em_takes_the_derived_steps(monkeypatch):
    calls = _count_lbfgs(monkeypatch)
    res = EM(hmm, num_steps=40, tol=0, progress=False).run(YS)
    assert calls == []
    trace = np.append(res.log_evidence_trace, res.log_evidence)
    assert np.all(np.diff(trace) >= -1e-9)
    # a fixed point of Baum-Welch: one more brute-force M-step does not move it
    again = _brute_force_moments(res.params, YS)
    for name, value in again.items():
        np.testing.assert_allclose(res.params[name], value, atol=1e-5, err_msg=name)


def penalised_mixture(x):
    # locs also enters a factor: the weighted mean is not the maximiser of Q, so the
    # proposal must not end the M-step
    locs = pyro.param("locs", torch.tensor([-1.0, 1.0]))
    weights = pyro.param("weights", torch.ones(2) / 2, constraint=constraints.simplex)
    pyro.factor("shrink", -2.0 * (locs ** 2).sum())
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(weights), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(locs[z], 1.0), obs=x)


@config_enumerate
def shifted_mixture(x):
    # loc = locs[z] + shift with shift = 0 at the start: locs matches by value, but the
    # model is not the standard one; the gradient test sends the M-step to L-BFGS
    locs = pyro.param("locs", torch.tensor([-1.0, 1.0]))
    shift = pyro.param("shift", torch.tensor(0.0))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(torch.ones(2) / 2))
        pyro.sample("x", dist.Normal(locs[z] + shift, 1.0), obs=x)


@pytest.mark.parametrize("model", [penalised_mixture, shifted_mixture])
def test_a_nonstandard_use_gets_the_generic_m_step(model):
    g = torch.Generator().manual_seed(3)
    x = torch.cat([torch.randn(30, generator=g) - 2, torch.randn(30, generator=g) + 3])
    derived = EM(model, num_steps=300, tol=1e-10, progress=False).run(x)
    generic = EM(model, num_steps=300, tol=1e-10, progress=False,
                 lbfgs=LBFGSMStep(derived=False)).run(x)
    trace = np.append(derived.log_evidence_trace, derived.log_evidence)
    assert np.all(np.diff(trace) >= -1e-9)
    assert derived.log_evidence == pytest.approx(generic.log_evidence, abs=1e-6)
    # (locs + c, shift - c) is one model: compare the component means
    means = [r.params["locs"] + r.params.get("shift", 0.0) for r in (derived, generic)]
    np.testing.assert_allclose(*means, atol=1e-4)


def test_a_proposal_that_lowers_q_is_undone():
    pyro.clear_param_store()
    loc = pyro.param("loc", torch.tensor(1.0))

    def q_fn():
        return -((pyro.param("loc") - 1.0) ** 2)

    assert try_proposal(q_fn, {"loc": torch.tensor(3.0)}, 0.0) == (False, 0.0, False)
    assert pyro.param("loc").item() == 1.0 and loc is not None


def test_pyro_hmm_model_6_as_written_takes_the_derived_steps(monkeypatch):
    # examples/hmm.py model_6: a second-order chain, Vindex(probs_x)[x_prev, x_curr], whose
    # enumerated dims lie right to left, and probs_x[0, 0], probs_x[0, x_0] at the first
    # two steps; every use is located in probs_x, and the statistics pooled over them are
    # the whole M-step
    from tests.gallery import models as m
    from tests.gallery.test_gallery import HMM_LENGTHS, HMM_SEQS

    seqs = HMM_SEQS.to(torch.get_default_dtype())  # imported under either default dtype
    calls = _count_lbfgs(monkeypatch)
    res = EM(m.hmm_model_6, num_steps=60, seed=0, progress=False).run(
        seqs, HMM_LENGTHS, m.HMM6_ARGS)
    assert calls == []
    assert res.converged
    assert np.all(np.diff(np.append(res.log_evidence_trace, res.log_evidence)) >= -1e-4)
    exact = m.hmm6_loglik_bruteforce(res.params["probs_x"], res.params["probs_y"],
                                     seqs, HMM_LENGTHS)
    assert res.log_evidence == pytest.approx(exact, abs=1e-4)


def test_the_gradient_test_runs_at_a_new_signature_periodically_and_last(monkeypatch):
    # the gradient test costs a differentiated trace: it proves a signature once, then
    # again every PROOF_EVERY iterations and at the iteration the fit ends with; between
    # proofs the proven closed form is taken when it raises Q
    proofs = []
    real = engines.try_proposal

    def counted(*args, check_gradient=True, **kwargs):
        proofs.append(check_gradient)
        return real(*args, check_gradient=check_gradient, **kwargs)

    monkeypatch.setattr(engines, "try_proposal", counted)
    x = _iris()
    init = x[torch.tensor([0, 50, 100])]
    steps = 40
    res = EM(user_gmm, num_steps=steps, tol=0, progress=False).run(x, init)
    assert len(proofs) == steps
    every = engines.EnumEngine.PROOF_EVERY
    assert [i for i, p in enumerate(proofs) if p] == [0, every, 2 * every, steps - 1]
    assert np.all(np.diff(np.append(res.log_evidence_trace, res.log_evidence)) >= -1e-9)


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_short_fits_prove_every_step(steps):
    # two proofs in a row: the second E-step reads the first proof's differentiated trace
    x = _iris()
    init = x[torch.tensor([0, 50, 100])]
    res = EM(user_gmm, num_steps=steps, tol=0, progress=False).run(x, init)
    assert res.num_steps == steps
    assert np.all(np.diff(np.append(res.log_evidence_trace, res.log_evidence)) >= -1e-9)
