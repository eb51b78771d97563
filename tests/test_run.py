"""The run policy shared by VI and EM (pyrovi._run), the exported errors, and the import
arrows between the packages."""

from __future__ import annotations

import ast
import pathlib

import pytest
import torch

import pyrovi
import pyrovi._run as run_module
import pyrovi.errors
from pyrovi._run import (
    RunState,
    guard,
    keep_result,
    stop_on_interrupt,
    warn_interrupted,
    with_result,
    write_checkpoint,
)
from pyrovi.errors import (
    CheckpointWarning,
    FitError,
    InterruptedFitWarning,
    ModelError,
    NonFiniteError,
)

PACKAGE = pathlib.Path(pyrovi.__file__).parent


def _run(tmp_path=None) -> RunState:
    path = None if tmp_path is None else str(tmp_path / "fit.ckpt")
    return RunState(seed=0, device=torch.device("cpu"), checkpoint=path)


# ------------------------------------------------------------------------ checkpoints
def test_a_failed_checkpoint_write_warns_and_goes_on(tmp_path, monkeypatch):
    def full_disk(path, checkpoint):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run_module, "save_checkpoint", full_disk)
    with pytest.warns(CheckpointWarning, match=r"could not write checkpoint .* at step 7 "
                      r"\(OSError: .*No space left.*previous checkpoint, if any, is intact"):
        assert write_checkpoint(_run(tmp_path), lambda: None, at="step 7") is False


def test_a_run_without_a_path_writes_nothing():
    def never():
        raise AssertionError("no checkpoint should be built")

    assert write_checkpoint(_run(), never, at="step 1") is False


# ---------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_ends_the_block_writes_a_checkpoint_and_is_reported(tmp_path, monkeypatch):
    written = []
    monkeypatch.setattr(run_module, "save_checkpoint", lambda path, ckpt: written.append(ckpt))
    run = _run(tmp_path)
    with stop_on_interrupt(run, at=lambda: "step 3", save=lambda: "state"):
        raise KeyboardInterrupt
    assert run.interrupted and run.saved_on_interrupt and written == ["state"]
    with pytest.warns(InterruptedFitWarning, match=r"stopped; \(checkpoint .*fit.ckpt' written\)"):
        warn_interrupted(run, "stopped;")


def test_each_run_state_starts_clean():
    first = _run()
    with stop_on_interrupt(first, at=lambda: "step 0"):
        raise KeyboardInterrupt
    assert first.interrupted
    second = _run()
    assert not second.interrupted and second.notes == [] and not second.saved_on_interrupt


# -------------------------------------------------------------------------- failures
def test_an_error_in_the_model_keeps_the_partial_result_and_checkpoint(tmp_path, monkeypatch):
    written = []
    monkeypatch.setattr(run_module, "save_checkpoint", lambda path, ckpt: written.append(ckpt))
    run = _run(tmp_path)
    with pytest.raises(FitError, match=r"the model raised RuntimeError at step 4: cable\. "
                       r"The parameters of the last completed step and the trace so far are "
                       r"in err\.result; checkpoint .* holds them too") as info:
        with guard(run, unit="step", done=lambda: 4, partial=lambda: "partial",
                   save=lambda: "ckpt"):
            raise RuntimeError("cable")
    assert info.value.step == 4 and info.value.result == "partial"
    assert isinstance(info.value.__cause__, RuntimeError) and written == ["ckpt"]
    assert not run.interrupted


def test_a_nonfinite_error_gets_the_partial_result_and_pyrovi_errors_pass():
    run = _run()
    with pytest.raises(NonFiniteError, match="became nan") as info:
        with keep_result(run, unit="iteration", done=lambda: 2, partial=lambda: "last good"):
            raise NonFiniteError("the log evidence became nan", step=2, site="w")
    assert info.value.result == "last good" and info.value.site == "w" and info.value.step == 2
    with pytest.raises(ModelError, match="bad model"):
        with keep_result(run, unit="iteration", done=lambda: 0, partial=lambda: "unused"):
            raise ModelError("bad model")


def test_with_result_keeps_class_message_and_site():
    err = NonFiniteError("nan at step 3", step=3, site="z")
    copy = with_result(err, "result", step=5)
    assert type(copy) is NonFiniteError and str(copy) == "nan at step 3"
    assert (copy.step, copy.site, copy.result) == (5, "z", "result")


# -------------------------------------------------------------------- the public API
def test_every_error_and_warning_is_exported_from_pyrovi():
    for name in pyrovi.errors.__all__:
        assert name in pyrovi.__all__, name
        assert getattr(pyrovi, name) is getattr(pyrovi.errors, name)
    assert issubclass(pyrovi.IntractableError, pyrovi.ModelError)


def test_diagnostics_raise_the_exported_intractable_error():
    import pyrovi.diagnostics

    assert pyrovi.diagnostics.IntractableError is pyrovi.IntractableError


# ------------------------------------------------------------------- import arrows
def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize(
    "modules, forbidden",
    [
        (["fast"], ("pyrovi.vi", "pyrovi.em")),
        (["_steps.py", "_run.py"], ("pyrovi.vi", "pyrovi.em", "pyrovi.fast")),
    ],
)
def test_import_arrows_go_downward(modules, forbidden):
    """The compiled backend and the shared run support import nothing above them."""
    files = []
    for module in modules:
        target = PACKAGE / module
        files += sorted(target.glob("*.py")) if target.is_dir() else [target]
    for path in files:
        bad = [m for m in _imports(path) if m.startswith(forbidden)]
        assert not bad, f"{path.name} imports {bad}"
