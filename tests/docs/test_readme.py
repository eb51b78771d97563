"""The README's quickstart, run as written, and the follow-up calls it lists."""

from __future__ import annotations

import pathlib
import re

import torch

import pyrovi

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def _quickstart() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_quickstart_runs_as_written_and_says_what_it_prints(capsys):
    ns: dict = {}
    exec(compile(_quickstart(), "README.md", "exec"), ns)  # noqa: S102 - our own README
    lines = capsys.readouterr().out.splitlines()
    fit = ns["fit"]  # the last one: fullrank
    assert [line.split()[0] for line in lines] == ["meanfield", "fullrank"]
    assert f"ELBO = {fit.elbo:.2f} ± {fit.elbo_se:.2f}" in lines[1]
    assert f"({fit.num_steps} steps)" in lines[1]

    # "Then fit.sample(1000), fit.median(), fit.quantiles([0.05, 0.95]),
    # fit.predictive(1000, X_new, None), pyrovi.diagnose(fit) and fit.to_arviz()"
    draws = fit.sample(1000)
    assert draws["w"].shape == (1000, 3) and bool((draws["sigma"] > 0).all())
    median = fit.median()
    q = fit.quantiles([0.05, 0.95])
    assert bool((q["w"][0] < median["w"]).all()) and bool((median["w"] < q["w"][1]).all())
    x_new = torch.randn(5, 3)
    pred = fit.predictive(1000, x_new, None)
    assert pred["y"].shape == (1000, 5)
    d = pyrovi.diagnose(fit, seed=0)
    # log p(x) = ELBO + KL(q || p): the gap is a KL divergence, non-negative up to its error
    assert d.gap > -3 * d.gap_se
    idata = fit.to_arviz(200)
    assert idata.posterior["w"].shape[-1] == 3 and "y" in idata.observed_data
