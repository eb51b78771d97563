"""The step's math: torch's Adam, clip_grad_norm_, skipping of non-finite steps, and the
compiled step against the traced graph."""

from __future__ import annotations

import pytest
import torch

from pyrovi.fast.step import Stepper, StepState, adam_update, clip_total_norm


def test_adam_update_is_torch_adam():
    g = torch.Generator().manual_seed(0)
    theta0 = torch.randn(7, generator=g)
    param = torch.nn.Parameter(theta0.clone())
    opt = torch.optim.Adam([param], lr=0.05)
    theta, m, v = theta0.clone(), torch.zeros(7), torch.zeros(7)
    for step in range(1, 6):
        grad = torch.randn(7, generator=g)
        if step == 4:
            opt.param_groups[0]["lr"] = 0.01
        param.grad = grad.clone()
        opt.step()
        lr = torch.tensor(opt.param_groups[0]["lr"])
        theta, m, v = adam_update(theta, grad, m, v, torch.tensor(float(step)), lr)
        torch.testing.assert_close(theta, param.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("max_norm", [0.5, 100.0, float("inf")])
def test_clip_is_clip_grad_norm(max_norm):
    grad = torch.tensor([3.0, -4.0, 1.0])
    param = torch.nn.Parameter(torch.zeros(3))
    param.grad = grad.clone()
    expected_norm = torch.nn.utils.clip_grad_norm_([param], max_norm)
    clipped, norm = clip_total_norm(grad, torch.tensor(max_norm))
    torch.testing.assert_close(norm, expected_norm)
    torch.testing.assert_close(clipped, param.grad)


def _state(n=3, window=10, max_skips=2):
    def s(value, dtype=torch.float32):
        return torch.tensor(value, dtype=dtype)

    return StepState(
        theta=torch.zeros(n), m=torch.zeros(n), v=torch.zeros(n), t=s(0.0),
        count=s(0, torch.int64), lr=s(0.1), max_norm=s(100.0),
        max_skips=s(max_skips, torch.int64), eps=torch.zeros(1, n),
        elbo=torch.zeros(window), skipped=s(0, torch.int64), streak=s(0, torch.int64),
        first_bad=s(-1, torch.int64), halted=s(False, torch.bool),
    )  # fmt: skip


def _walled(theta, eps):
    """-ELBO of a quadratic pulling theta to 3, NaN once theta[0] passes 1."""
    loss = ((theta + eps[0] - 3.0) ** 2).sum()
    return torch.where(theta[0] > 1.0, torch.full_like(loss, float("nan")), loss)


def test_nonfinite_steps_are_skipped_then_halt():
    state = _state(max_skips=2)
    step = Stepper(_walled, state, policy="never")
    history = []
    for _ in range(40):
        before = state.theta.clone()
        step()
        history.append(before)
    assert bool(state.halted)
    first = int(state.first_bad)
    assert float(history[first][0]) > 1.0 >= float(history[first - 1][0])
    torch.testing.assert_close(state.theta, history[first])  # nothing moved after that
    assert int(state.skipped) == 3 and int(state.count) == 40
    assert int(state.t) == first  # Adam counts only the updates taken


def test_compiled_step_matches_traced_graph():
    """The one test that pays for torch.compile (a few seconds)."""
    eager, compiled = _state(), _state()
    steps = [Stepper(lambda t, e: ((t - 3.0) ** 2 * torch.arange(1.0, 4.0)).sum(), s, p)
             for s, p in ((eager, "never"), (compiled, "always"))]
    steps[1].maybe_compile(0)
    for _ in range(25):
        for s in steps:
            s()
    assert steps[1].compiled and steps[1].note is None
    torch.testing.assert_close(compiled.theta, eager.theta)
    torch.testing.assert_close(compiled.elbo, eager.elbo)
    assert int(compiled.count) == 25


def test_auto_policy_compiles_only_when_the_predicted_saving_repays_it(monkeypatch):
    """The decision of PYROVI_COMPILE=auto, fed step times (nothing here is timed):
    saving = min(steps left, steps done) x eager step x COMPILE_SAVING vs COMPILE_COST."""
    import pyrovi.fast.step as step_module

    monkeypatch.setattr(step_module, "_MEASURED", {})
    cost, saving = step_module.COMPILE_COST["cpu"], step_module.COMPILE_SAVING["cpu"]
    step = Stepper(lambda t, e: ((t - 3.0) ** 2).sum(), _state(), policy="auto")
    step.maybe_compile(0, 10_000)  # nothing timed yet: no decision
    assert not step.compiled and step.compile_note is None
    step.record(100, 0.1)  # 1 ms a step
    done = int(cost / (1e-3 * saving))  # the saving of this many more steps = the cost
    step.maybe_compile(done, 100_000)
    assert not step.compiled
    assert step.compile_note.startswith(f"not compiled: at step {done} the predicted saving")
    step.maybe_compile(done, 50)  # few steps left: still not worth it
    assert not step.compiled
    step.maybe_compile(done + 100, 100_000)  # now the saving exceeds the cost
    assert step.compiled and step.compiled_at == done + 100
    step.record(10, 2.01)  # the window that compiled: 2 s over 10 eager steps
    assert step.compile_s == pytest.approx(2.0)
    step.record(10, 0.005)  # compiled: 0.5 ms a step
    assert step_module._MEASURED["cpu"] == pytest.approx((2.0, 0.5))
    assert step.compile_note == (
        f"compiled with torch.compile at step {done + 100}; compiling took 2 s; "
        "step 1 ms eager, 0.5 ms compiled"
    )
