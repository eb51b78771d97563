"""pyrovi._plates: the draw plate, the pad / sum helpers, the fallback to a loop and the
site filters, checked against explicit shapes and closed-form log densities."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

from pyrovi._draws import model_log_density
from pyrovi._model import inspect_model
from pyrovi._plates import (
    DRAW_PLATE,
    SiteShape,
    draw_dim,
    draw_plate,
    is_traced_sample,
    is_user_sample,
    pad_draws,
    per_draw_sum,
    site_shapes,
    unpad_draws,
    vectorize_else_loop,
)

F64 = torch.float64


def every_kind_of_site(x):
    """A latent, an event-shaped latent outside plates, a subsampled plate, a factor, a
    deterministic record and an observed site."""
    w = pyro.sample("w", dist.Normal(torch.zeros(3, dtype=F64), 1.0).to_event(1))
    pyro.factor("penalty", -(w**2).sum())
    pyro.deterministic("w_sum", w.sum())
    with pyro.plate("data", 6, subsample_size=4) as idx:
        z = pyro.sample("z", dist.Normal(torch.tensor(0.0, dtype=F64), 1.0))
        pyro.sample("x", dist.Normal(z + w.sum(), 1.0), obs=x[idx])


@pytest.fixture(scope="module")
def trace():
    x = torch.linspace(-1, 1, 6, dtype=F64)
    return poutine.trace(every_kind_of_site).get_trace(x)


def test_site_filters_tell_data_from_bookkeeping(trace):
    user = [n for n, s in trace.nodes.items() if is_user_sample(s)]
    traced = [n for n, s in trace.nodes.items() if is_traced_sample(s)]
    assert user == ["w", "z", "x"]
    # factors enter log p(x, z) and deterministic records are recorded; subsample indices not
    assert traced == ["w", "penalty", "w_sum", "z", "x"]
    assert "data" in trace.nodes and not is_traced_sample(trace.nodes["data"])
    # the model inspection counts the same sites as latent or observed
    info = inspect_model(every_kind_of_site, (torch.linspace(-1, 1, 6, dtype=F64),))
    assert set(info.latent) | set(info.observed) == set(user)


def test_site_shapes_split_batch_and_event_dims(trace):
    shapes = site_shapes(trace)
    assert shapes["w"] == SiteShape((3,), 0)
    assert shapes["w"].event_shape == (3,) and shapes["w"].batch_shape == ()
    assert shapes["z"] == SiteShape((4,), 1)
    assert shapes["x"].batch_shape == (4,)
    assert "data" not in shapes


def test_draw_plate_is_outermost():
    assert draw_dim(0) == -1 and draw_dim(2) == -3
    plate = draw_plate(5, 2)
    assert plate.name == DRAW_PLATE and plate.dim == -3 and plate.size == 5


@pytest.mark.parametrize(
    ("shape", "nesting", "layout"),
    [
        (SiteShape((3,), 0), 1, (7, 1, 3)),  # event dims outside every plate
        (SiteShape((4,), 1), 1, (7, 4)),  # one plate
        (SiteShape((2, 4), 2), 2, (7, 2, 4)),  # nested plates
        (SiteShape((4, 5), 1), 2, (7, 1, 4, 5)),  # inner plate, event dim
        (SiteShape((), 0), 2, (7, 1, 1)),  # scalar
    ],
)
def test_pad_and_unpad_are_inverse(shape, nesting, layout):
    value = torch.randn((7,) + shape.shape)
    padded = pad_draws(value, shape, nesting)
    assert padded.shape == layout
    assert torch.equal(unpad_draws(padded, shape, nesting, 7), value)


def test_unpad_broadcasts_a_value_that_does_not_vary_over_draws():
    shape = SiteShape((4,), 1)
    same = torch.arange(4.0)  # no draw dim: e.g. observed data under the draw plate
    out = unpad_draws(same, shape, 1, 3)
    assert out.shape == (3, 4) and torch.equal(out, same.expand(3, 4))


def test_per_draw_sum():
    lp = torch.arange(24.0).reshape(3, 2, 4)  # draws at dim -3, plates at -2 and -1
    assert torch.equal(per_draw_sum(lp, 3, 2), lp.reshape(3, -1).sum(-1))
    # a term without a draw dim counts in every draw
    assert torch.equal(per_draw_sum(torch.ones(2, 4), 3, 2), torch.full((3,), 8.0))
    assert torch.equal(per_draw_sum(torch.ones(1, 1, 4), 3, 2), torch.full((3,), 4.0))


def test_vectorize_else_loop_falls_back_only_on_broadcast_errors():
    calls = []

    def run(vectorized):
        calls.append(vectorized)
        if vectorized:
            raise RuntimeError("shape mismatch")
        return "looped"

    assert vectorize_else_loop(run) == "looped" and calls == [True, False]
    calls.clear()
    assert vectorize_else_loop(run, vectorize=False) == "looped" and calls == [False]
    assert vectorize_else_loop(lambda v: v) is True

    def broken(vectorized):
        raise TypeError("a bug, not a shape problem")

    with pytest.raises(TypeError, match="a bug"):
        vectorize_else_loop(broken)


def matmul_model(X, y):
    """Written for one draw (``X @ w``): does not broadcast over a draw plate."""
    w = pyro.sample("w", dist.Normal(torch.zeros(2, dtype=F64), 1.0).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal(X @ w, 0.5), obs=y)


def test_log_density_vectorized_else_looped_matches_closed_form():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(5, 2, generator=gen, dtype=F64)
    y = torch.randn(5, generator=gen, dtype=F64)
    w = torch.randn(4, 2, generator=gen, dtype=F64)
    trace = poutine.trace(matmul_model).get_trace(X, y)
    shapes = site_shapes(trace)
    lp, log_lik = vectorize_else_loop(
        lambda v: model_log_density(matmul_model, (X, y), {}, {"w": w}, shapes=shapes,
                                    max_plate_nesting=1, vectorized=v)
    )
    pointwise = dist.Normal(w @ X.T, 0.5).log_prob(y)  # (4, 5)
    truth = dist.Normal(0.0, 1.0).log_prob(w).sum(-1) + pointwise.sum(-1)
    torch.testing.assert_close(lp, truth)
    torch.testing.assert_close(log_lik["y"], pointwise)


def test_factor_enters_log_joint_but_not_the_log_likelihood():
    def model(y):
        z = pyro.sample("z", dist.Normal(torch.tensor(0.0, dtype=F64), 1.0))
        pyro.factor("bonus", 2.0 * z)
        with pyro.plate("n", y.shape[0]):
            pyro.sample("y", dist.Normal(z, 1.0), obs=y)

    y = torch.tensor([0.5, -0.2, 1.0], dtype=F64)
    z = torch.tensor([0.1, -0.3], dtype=F64)
    shapes = site_shapes(poutine.trace(model).get_trace(y))
    for vectorized in (True, False):
        lp, log_lik = model_log_density(model, (y,), {}, {"z": z}, shapes=shapes, max_plate_nesting=1,
                                        vectorized=vectorized)
        pointwise = dist.Normal(z[:, None], 1.0).log_prob(y)
        truth = dist.Normal(0.0, 1.0).log_prob(z) + 2.0 * z + pointwise.sum(-1)
        torch.testing.assert_close(lp, truth)
        assert set(log_lik) == {"y"}
        torch.testing.assert_close(log_lik["y"], pointwise)
