"""compare() tables and the ELBO / gap plots."""

import matplotlib
import matplotlib.pyplot as plt
import pytest

from pyrovi.diagnostics import ComparisonTable, compare, log_evidence, plot_elbo, plot_gap
from pyrovi.diagnostics.compare import COLUMNS, OPTIONAL
from pyrovi.diagnostics.diagnose import format_gap

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def table(meanfield, fullrank, em_result):
    return compare({"meanfield": meanfield, "fullrank": fullrank, "em": em_result},
                   num_particles=2000, seed=0)


def test_table_rows_and_columns(table, meanfield, em_result):
    assert isinstance(table, ComparisonTable)
    assert [r["name"] for r in table.rows] == ["meanfield", "fullrank", "em"]
    # error bounds by default, so their columns show; no bracket nor loo was asked for
    assert table.columns == tuple(k for k in COLUMNS if OPTIONAL.get(k) not in ("bracket", "loo"))
    for row in table.rows:
        assert set(row) == set(COLUMNS) | {"bounds_reliable", "verdict"}
        assert row["bracket_lower"] is None and row["upper_is"] is None
        assert row["verdict"] == table.diagnostics[row["name"]].verdict.sentence
    mf, fr, em = table.rows
    assert mf["num_steps"] == meanfield.num_steps and em["num_steps"] == em_result.num_steps
    assert em["gap"] == pytest.approx(0.0, abs=1e-6) and em["family"] == "em"
    assert mf["gap"] > fr["gap"]
    assert table.diagnostics["fullrank"].gap == fr["gap"]


def test_table_renderings(table):
    text = str(table).splitlines()
    assert len(text) == 2 + 3 + 1 and "ELBO" in text[0] and "k-hat" in text[0]
    assert "mean err <= (sd)" in text[0] and "upper is" not in text[0]
    assert text[2].startswith("meanfield") and text[4].startswith("em")
    assert text[5].startswith("mean err, sd err: bounds on |q - posterior|")
    html = table._repr_html_()
    assert html.count("<tr>") == 4 and html.count("<th>") == len(table.columns)
    pd = pytest.importorskip("pandas")
    frame = table.to_pandas()
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.index) == ["meanfield", "fullrank", "em"]
    assert list(frame.columns) == list(COLUMNS)[1:] + ["bounds_reliable", "verdict"]


def test_compare_bad_input():
    with pytest.raises(ValueError, match="results is empty"):
        compare({})
    with pytest.raises(TypeError, match="results must be a dict"):
        compare(3)


def test_plot_elbo_draws_the_tables_numbers(meanfield, fullrank, exact, table):
    """The final ELBO point and the legend's gap are the comparison table's numbers; the
    running mean carries its Monte Carlo band; the evidence line is where it should be."""
    ref = log_evidence(fullrank)
    assert ref.value == pytest.approx(exact, abs=1e-6)
    style = dict(plt.rcParams)
    ax = plot_elbo({"meanfield": meanfield, "fullrank": fullrank}, log_evidence=ref,
                   diagnostics=table)
    labels = ax.get_legend_handles_labels()[1]
    for name in ("meanfield", "fullrank"):
        diag = table.diagnostics[name]
        assert f"{name}: ELBO, running mean ± 2 se" in labels
        point = next(lab for lab in labels if lab.startswith(f"{name}: final ELBO"))
        assert f"{diag.elbo:.4g} ± {diag.elbo_se:.2g}" in point
        assert f"gap {format_gap(diag.gap, diag.gap_se)} ± {diag.gap_se:.2g}" in point
    markers = [line for line in ax.get_lines() if line.get_marker() == "D"]
    assert [m.get_ydata()[0] for m in markers] == pytest.approx(
        [table.diagnostics["meanfield"].elbo, table.diagnostics["fullrank"].elbo])
    assert [m.get_xdata()[0] for m in markers] == [meanfield.num_steps, fullrank.num_steps]
    evidence_line = next(line for line in ax.get_lines() if line.get_linestyle() == "--")
    assert evidence_line.get_ydata()[0] == pytest.approx(exact)
    assert ax.get_title() == "ELBO vs log evidence"
    assert dict(plt.rcParams) == style  # ArviZ style only inside the call
    plt.close("all")


def test_plot_elbo_without_evidence_and_with_em(meanfield, em_result):
    ax = plot_elbo(meanfield)
    assert ax.get_title() == "Training objective (no evidence given)"
    assert not any("gap" in lab for lab in ax.get_legend_handles_labels()[1])
    # EM's handful of iterations get their own axis beside a VI trace of thousands of steps
    ax = plot_elbo({"meanfield": meanfield, "em": em_result})
    twins = [a for a in ax.figure.axes if a is not ax]
    assert len(twins) == 1 and twins[0].get_xlabel() == "EM iteration"
    em_line = twins[0].get_lines()[0]
    assert list(em_line.get_ydata()) == pytest.approx(list(em_result.log_evidence_trace))
    ax = plot_elbo(em_result)
    assert ax.get_title() == "Log evidence by EM iteration" and len(ax.figure.axes) == 1
    plt.close("all")


def test_table_prints_exact_and_zero_gaps_and_dashes(table):
    em = table.diagnostics["em"]
    assert em.exact_posterior and em.given_params and not em.khat_applies
    line = next(row for row in str(table).splitlines() if row.startswith("em"))
    assert "0 (exact)" in line and "p(x | theta)" in line and "-0.0000" not in line
    assert line.split().count("-") == 3  # gap se, k-hat and ESS do not apply
    assert format_gap(0.004, 0.003) == "~0" and format_gap(0.01, 0.003) == "0.0100"
    assert format_gap(-1e-9, 0.0) == "~0" and format_gap(0.0, 0.0, exact=True) == "0 (exact)"
    mf = next(row for row in str(table).splitlines() if row.startswith("meanfield"))
    assert "p(x)" in mf and "p(x | theta)" not in mf


def test_plot_gap_bars(table):
    fig, ax = plt.subplots()
    out = plot_gap(table, ax=ax)
    assert out is ax
    assert len(ax.patches) == 3
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([r["gap"] for r in table.rows])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["meanfield", "fullrank", "em"]
    with pytest.raises(TypeError, match="expects a ComparisonTable"):
        plot_gap([1, 2])
    plt.close("all")


def test_bracket_and_bound_columns(meanfield, em_result, exact):
    from pyrovi.diagnostics import AIS

    table = compare({"meanfield": meanfield, "em": em_result}, num_particles=1000, seed=0,
                    bracket=AIS(num_temperatures=30, num_runs=4))
    assert table.columns[-5:] == ("bracket_lower", "bracket_upper", "upper_is",
                                  "mean_error", "sd_error")
    mf, em = table.rows
    d = table.diagnostics["meanfield"]
    assert mf["bracket_lower"] == d.bracket.lower and mf["bracket_upper"] == d.bracket.upper
    assert mf["upper_is"] == "estimate"  # real data: no exact posterior draw
    assert d.bracket.contains(exact)
    assert mf["mean_error"] == pytest.approx(d.error_bounds.max_relative_mean_error())
    assert mf["sd_error"] == pytest.approx(d.error_bounds.max_relative_sd_error())
    assert em["bracket_lower"] is None and em["mean_error"] == 0.0  # exact posterior
    text = str(table).splitlines()
    assert "upper is" in text[0] and "sd err <= (sd)" in text[0]
    em_line = next(r for r in text if r.startswith("em"))
    assert em_line.count("0 (exact)") == 3  # the gap, the mean and the sd errors
    assert text[-2].startswith("lower, upper: bidirectional AIS around log p(x)")
    with pytest.raises(TypeError, match=r"compare\(bracket=...\) takes True or AIS options"):
        compare({"meanfield": meanfield}, bracket=d.bracket)
