"""``pyrovi._runtime``: seeds, parameter scopes, devices and argument checks."""

import warnings

import pyro
import pytest
import torch

from pyrovi._runtime import (
    check_positive,
    move_to_device,
    param_scope,
    renamed_keyword,
    seeded,
    snapshot_store,
)


def test_seeded_repeats_draws_and_restores_the_callers_state():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    with seeded(7):
        a = torch.randn(3)
    assert torch.equal(torch.get_rng_state(), before)
    with seeded(7):
        b = torch.randn(3)
    assert torch.equal(a, b)


def test_param_scope_keeps_fits_apart_and_the_global_store_intact():
    pyro.param("outside", torch.tensor(1.0))
    with param_scope():
        pyro.param("inside", torch.tensor(2.0))
        assert "outside" not in pyro.get_param_store()
        state = snapshot_store()
    assert "inside" not in pyro.get_param_store()
    assert float(pyro.param("outside").detach()) == 1.0
    with param_scope(state):
        assert float(pyro.param("inside").detach()) == 2.0


def test_move_to_device_reaches_into_containers():
    value = {"a": (torch.ones(1), [torch.zeros(2)]), "b": 3}
    moved = move_to_device(value, torch.device("cpu"))
    assert moved["b"] == 3 and torch.equal(moved["a"][1][0], torch.zeros(2))
    assert isinstance(moved["a"], tuple) and isinstance(moved["a"][1], list)


@pytest.mark.parametrize(
    "value, integer, error, match",
    [
        (0, True, ValueError, r"num_steps must be a positive int, got 0"),
        (2.5, True, TypeError, r"num_steps must be a positive int, got float 2.5"),
        (True, True, TypeError, r"num_steps must be a positive int, got bool True"),
        (float("nan"), False, ValueError, r"num_steps must be a positive number, got nan"),
        ("1", False, TypeError, r"num_steps must be a positive number, got str '1'"),
    ],
)
def test_check_positive_names_the_argument(value, integer, error, match):
    with pytest.raises(error, match=match):
        check_positive("num_steps", value, integer=integer)


def test_renamed_keyword():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert renamed_keyword("EM", "num_iters", None, "num_steps", 5, 100) == 5
    with pytest.warns(DeprecationWarning, match="EM: the keyword num_iters= is now num_steps="):
        assert renamed_keyword("EM", "num_iters", 7, "num_steps", 100, 100) == 7
    with pytest.raises(TypeError, match="EM got both num_steps= and its old name num_iters="):
        renamed_keyword("EM", "num_iters", 7, "num_steps", 5, 100)
