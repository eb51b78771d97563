"""``pyrovi demo``: the same models fitted with EM and every guide family, how far each ELBO
falls below the log evidence, and the results written as ArviZ files, plots and a report.

The suite runs on data that ships with pyrovi or scikit-learn (no download):

* a Gaussian mixture on the iris measurements: exact EM against a variational Bayesian
  mixture whose assignments are enumerated;
* Bayesian linear regression on the diabetes data: the exact log evidence against each
  guide family;
* the eight-schools hierarchical model (non-centred): meanfield against fullrank, with an
  annealed-importance-sampling estimate of the evidence.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import sys
import time
from collections.abc import Callable

import torch

from pyrovi._files import atomic_path, atomic_write, check_inside

__all__ = ["run_demo", "DemoCase"]


@dataclasses.dataclass(frozen=True)
class DemoCase:
    """One model of the suite: how to fit it, and how its evidence is obtained."""

    name: str
    title: str
    fit: Callable  # (quick, seed, device) -> dict label -> result
    evidence: Callable  # (results, quick, seed) -> Estimate


# ---------------------------------------------------------------- the three demo cases
def _regression_fits(quick: bool, seed: int, device):
    import pyrovi
    from pyrovi.datasets import diabetes
    from pyrovi.models import linear_regression

    X, y = diabetes()
    families = ["meanfield", "fullrank"]
    if not quick:
        families = ["meanfield", "lowrank:3", "fullrank", "laplace"]
    kw = dict(seed=seed, progress=True, device=device)
    if quick:
        kw.update(num_steps=600)
    return {fam: pyrovi.VI(linear_regression, fam, **kw).run(X, y) for fam in families}


def _regression_evidence(results, quick, seed):
    import pyrovi

    first = next(iter(results.values()))
    return pyrovi.log_evidence(first.model, *first.args, method="exact", **first.kwargs)


def _mixture_model(data, K: int = 3):
    """A variational-Bayes Gaussian mixture with diagonal covariances.

    The component parameters are single sites with a (K, D) event, rather than a
    components plate, so that they broadcast against the data plate under vectorized
    particles; the assignments are enumerated.
    """
    import pyro
    import pyro.distributions as dist
    from pyro.ops.indexing import Vindex

    D = data.shape[-1]
    zeros = torch.zeros(K, D, dtype=data.dtype)
    weights = pyro.sample("weights", dist.Dirichlet(torch.ones(K, dtype=data.dtype)))
    locs = pyro.sample("locs", dist.Normal(zeros, 3.0).to_event(2))
    scales = pyro.sample("scales", dist.LogNormal(zeros, 1.0).to_event(2))
    with pyro.plate("data", data.shape[0]):
        z = pyro.sample("z", dist.Categorical(weights))
        pyro.sample(
            "x",
            dist.Normal(Vindex(locs)[..., z, :], Vindex(scales)[..., z, :]).to_event(1),
            obs=data,
        )


def _iris() -> torch.Tensor:
    from sklearn.datasets import load_iris

    x = torch.tensor(load_iris().data)
    return (x - x.mean(0)) / x.std(0)


def _mixture_fits(quick: bool, seed: int, device):
    import pyrovi
    from pyrovi.em import gaussian_mixture_model

    data = _iris()
    em = pyrovi.EM(
        gaussian_mixture_model(3, covariance_type="diag"), seed=seed, progress=True,
        num_inits=1 if quick else 3, device=device,
    ).run(data)
    kw = dict(seed=seed, progress=True, device=device)
    if quick:
        kw.update(num_steps=600)
    vb = pyrovi.VI(_mixture_model, "meanfield", **kw).run(data)
    return {"em (diag GMM)": em, "vb meanfield": vb}


def _mixture_evidence(results, quick, seed):
    return None  # each row carries its own: EM exact, VB by importance sampling


def _schools_fits(quick: bool, seed: int, device):
    import pyrovi
    from pyrovi.datasets import eight_schools
    from pyrovi.models import eight_schools_noncentered

    y, sigma = eight_schools()
    kw = dict(seed=seed, progress=True, device=device)
    if quick:
        kw.update(num_steps=600)
    return {
        fam: pyrovi.VI(eight_schools_noncentered, fam, **kw).run(sigma, y)
        for fam in ("meanfield", "fullrank")
    }


def _schools_evidence(results, quick, seed):
    import pyrovi

    fr = results["fullrank"]
    ais = pyrovi.AIS(num_temperatures=50 if quick else 200)
    return pyrovi.log_evidence(fr, method=ais, guide=fr, seed=seed)


CASES = (
    DemoCase("mixture", "Gaussian mixture (iris): exact EM vs variational Bayes",
             _mixture_fits, _mixture_evidence),
    DemoCase("regression", "Bayesian linear regression (diabetes): exact evidence vs guides",
             _regression_fits, _regression_evidence),
    DemoCase("eight_schools", "Eight schools (non-centred): meanfield vs fullrank",
             _schools_fits, _schools_evidence),
)


# ------------------------------------------------------------------------- the driver
def _prepare_out(out: str | None, force: bool) -> str:
    if out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = os.path.join(os.getcwd(), f"pyrovi-demo-{stamp}")
    if os.path.exists(out) and not os.path.isdir(out):
        raise SystemExit(f"pyrovi demo: --out {out!r} is a file, not a folder; pass a folder")
    os.makedirs(out, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise SystemExit(f"pyrovi demo: cannot write to --out {out!r}; pass a writable folder")
    existing = [f for f in os.listdir(out) if not f.startswith(".")]
    for name in sorted(existing):  # before any work: --force never writes through a link
        _target(out, name)
    if existing and not force:
        raise SystemExit(
            f"pyrovi demo: --out {out!r} already holds {len(existing)} file(s) (e.g. "
            f"{sorted(existing)[0]!r}) that the demo would overwrite; pass --force or "
            "another folder"
        )
    return out


def _target(out: str, name: str) -> str:
    """The path of the demo's file ``name`` in ``out``, refused (SystemExit) when it is a
    symbolic link that leads out of ``out``.  Every file is then written through
    :mod:`pyrovi._files` (a fresh temporary file renamed over the target), so a link inside
    ``out`` is replaced, never written through."""
    path = os.path.join(out, name)
    try:
        return check_inside(path, out)
    except PermissionError as err:
        raise SystemExit(f"pyrovi demo: {err}") from None


def _save_figure(figure, path: str) -> None:
    atomic_write(path, lambda fh: figure.savefig(fh, format="png", dpi=150,
                                                 bbox_inches="tight"))


def _verdict(name: str, results: dict, table) -> str:
    """Plain words, from the table's own numbers: each fit's gap with its error, what its
    k-hat says against the sample-size threshold, and what meanfield misses."""
    from pyrovi.diagnostics.diagnose import format_gap

    words = []
    for r in table.rows:
        diag = table.diagnostics[r["name"]]
        if diag.exact_posterior:
            words.append(f"{r['name']}: exact posterior (gap 0; its {diag.evidence_label} is "
                         "a likelihood at the fitted parameters, not a marginal likelihood)")
            continue
        if r["gap"] != r["gap"]:
            continue
        gap = format_gap(r["gap"], r["gap_se"])
        text = f"{r['name']} gap {gap} ± {r['gap_se']:.2f} nats"
        if diag.khat_applies:
            ok = diag.khat < diag.khat_threshold
            text += (f", k-hat {diag.khat:.2f} {'<' if ok else '>='} "
                     f"{diag.khat_threshold:.2f} ({'reliable' if ok else 'unreliable'}: "
                     + ("importance estimates can be trusted" if ok else
                        "q misses posterior mass, so the gap and any importance-corrected "
                        "estimate are unreliable; try a richer family")
                     + ")")
        words.append(text)
    vi = {k: r for k, r in results.items() if r.kind == "vi"}
    if "meanfield" in vi and "fullrank" in vi:
        mf = vi["meanfield"].sample(2000, seed=0)
        fr = vi["fullrank"].sample(2000, seed=0)
        for site in mf:
            ratio = float(mf[site].double().std(0).mean() / fr[site].double().std(0).mean())
            if ratio < 0.8:
                words.append(
                    f"meanfield understates the posterior spread of {site} "
                    f"(sd {ratio:.0%} of fullrank's)"
                )
    return "; ".join(words)


def _bracket_options(result, quick: bool):
    """Bidirectional AIS for the report: VI fits with continuous latents only (an exact
    posterior needs none; enumerated discrete latents have no flat density to anneal)."""
    import pyrovi

    if result.kind != "vi" or result.enumerated_sites or not result.has_density:
        return False
    return pyrovi.AIS(num_temperatures=30 if quick else 200, num_runs=4 if quick else 8)


def _bounds_line(label: str, diag) -> str:
    """One fit's bracket, error bounds and verdict for the report, each number said to be
    a bound or an estimate."""
    parts = []
    b = diag.bracket
    if b is not None:
        upper = "bound" if b.upper_is_bound else "estimate"
        parts.append(f"{diag.evidence_label} in [{b.lower:.3f} ± {b.lower_se:.3f} (bound), "
                     f"{b.upper:.3f} ± {b.upper_se:.3f} ({upper})] by bidirectional AIS")
    elif diag.exact_posterior:
        parts.append(f"{diag.evidence_label} exact (q is the exact posterior)")
    else:
        parts.append("no bracket (enumerated discrete latents)")
    eb = diag.error_bounds
    if eb is not None:
        trust = "reliable" if eb.reliable else "not reliable: k-hat >= 0.5"
        parts.append(f"|mean error| <= {eb.max_relative_mean_error():.2f} sd, |sd error| <= "
                     f"{eb.max_relative_sd_error():.2f} sd of q (bounds, {trust})")
    elif diag.bounds_note:
        parts.append(f"no error bounds ({diag.bounds_note})")
    text = f"- `{label}`: " + "; ".join(parts)
    if diag.verdict is not None:
        text += f". *{diag.verdict.sentence}*"
    return text


def _run_case(case: DemoCase, out: str, *, quick: bool, seed: int, device) -> list[str]:
    """Fit one case, write its netCDF files (each right after its diagnosis) and plots,
    print its table and verdict; return its section of the report."""
    import matplotlib.pyplot as plt

    import pyrovi

    t0 = time.perf_counter()
    results = case.fit(quick, seed, device)
    evidence = case.evidence(results, quick, seed)
    diags = {}
    for label, result in results.items():
        particles = 500 if quick else 2000
        if result.kind == "vi" and result.enumerated_sites:
            particles //= 4  # weighted one draw at a time
        diags[label] = pyrovi.diagnose(
            result, num_particles=particles, seed=seed,
            evidence=evidence if evidence is not None else "auto",
            bracket=_bracket_options(result, quick),
        )
        fname = f"{case.name}_{label.split(' ')[0].replace(':', '')}.nc"
        idata = result.to_arviz(200 if quick else 500, seed=seed, diagnostics=diags[label])
        with atomic_path(_target(out, fname)) as tmp:
            pyrovi.save_netcdf(idata, tmp)
    table = pyrovi.compare(results, diagnostics=diags)
    print(table, flush=True)
    verdict = _verdict(case.name, results, table)
    print(f"  verdict: {verdict}  ({time.perf_counter() - t0:.1f} s)\n", flush=True)
    ax = pyrovi.plot_elbo(results, log_evidence=evidence, diagnostics=table)
    _save_figure(ax.figure, _target(out, f"{case.name}_elbo.png"))
    plt.close(ax.figure)
    ax = pyrovi.plot_gap(table)
    _save_figure(ax.figure, _target(out, f"{case.name}_gap.png"))
    plt.close(ax.figure)
    return [
        f"## {case.title}", "", "```", str(table), "```", "", f"**Verdict:** {verdict}", "",
        "Bounds and estimates, fit by fit:", "",
        *(_bounds_line(label, diags[label]) for label in results), "",
        f"![ELBO traces]({case.name}_elbo.png)", f"![gap]({case.name}_gap.png)", "",
    ]


def run_demo(
    *, out: str | None = None, quick: bool = False, force: bool = False,
    device: str | None = None, seed: int = 0,
) -> int:
    """Run the demo suite; see the module docstring.  Returns a process exit code."""
    import matplotlib

    matplotlib.use("Agg")
    import pyrovi

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    out = _prepare_out(out, force)
    report = ["# pyrovi demo", "", f"Written by pyrovi {pyrovi.__version__}.", ""]
    start = time.perf_counter()
    print(f"pyrovi demo: writing to {out}", flush=True)
    try:
        for i, case in enumerate(CASES, 1):
            print(f"[{i}/{len(CASES)}] {case.title} ...", flush=True)
            report += _run_case(case, out, quick=quick, seed=seed, device=device)
            text = "\n".join(report).encode()
            atomic_write(_target(out, "report.md"), lambda fh, text=text: fh.write(text))
    except KeyboardInterrupt:
        print(f"interrupted: the fits finished so far are in {out}", file=sys.stderr)
        return 130
    print(f"done in {time.perf_counter() - start:.0f} s; results in {out}", file=sys.stderr)
    return 0
