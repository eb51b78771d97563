"""compare() tables and the ELBO / gap plots."""

import matplotlib
import matplotlib.pyplot as plt
import pytest

from pyrovi.diagnostics import ComparisonTable, compare, log_evidence, plot_elbo, plot_gap
from pyrovi.diagnostics.compare import COLUMNS

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def table(meanfield, fullrank, em_result):
    return compare({"meanfield": meanfield, "fullrank": fullrank, "em": em_result},
                   num_particles=2000, seed=0)


def test_table_rows_and_columns(table, meanfield, em_result):
    assert isinstance(table, ComparisonTable)
    assert [r["name"] for r in table.rows] == ["meanfield", "fullrank", "em"]
    assert table.columns == tuple(COLUMNS)
    for row in table.rows:
        assert set(row) == set(COLUMNS)
    mf, fr, em = table.rows
    assert mf["num_steps"] == meanfield.num_steps and em["num_steps"] == em_result.num_steps
    assert em["gap"] == pytest.approx(0.0, abs=1e-6) and em["family"] == "em"
    assert mf["gap"] > fr["gap"]
    assert table.diagnostics["fullrank"].gap == fr["gap"]


def test_table_renderings(table):
    text = str(table).splitlines()
    assert len(text) == 2 + 3 and "ELBO" in text[0] and "k-hat" in text[0]
    assert text[2].startswith("meanfield") and text[4].startswith("em")
    html = table._repr_html_()
    assert html.count("<tr>") == 4 and html.count("<th>") == len(COLUMNS)
    pd = pytest.importorskip("pandas")
    frame = table.to_pandas()
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.index) == ["meanfield", "fullrank", "em"]
    assert list(frame.columns) == list(COLUMNS)[1:]


def test_compare_bad_input():
    with pytest.raises(ValueError, match="results is empty"):
        compare({})
    with pytest.raises(TypeError, match="results must be a dict"):
        compare(3)


def test_plot_elbo_lines_and_shading(meanfield, fullrank, exact):
    ref = log_evidence(fullrank)
    assert ref.value == pytest.approx(exact, abs=1e-6)
    style = dict(plt.rcParams)
    ax = plot_elbo({"meanfield": meanfield, "fullrank": fullrank}, log_evidence=ref)
    assert len(ax.get_lines()) == 3  # two ELBO traces + the log-evidence line
    assert len(ax.collections) == 2  # one shaded gap per fit
    assert ax.get_lines()[-1].get_ydata()[0] == pytest.approx(exact)
    assert dict(plt.rcParams) == style  # ArviZ style only inside the call
    ax2 = plot_elbo(meanfield)
    assert len(ax2.get_lines()) == 1 and len(ax2.collections) == 0
    plt.close("all")


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
