"""Untrusted files: checkpoints are read without running anything, writes never follow a
planted link, checkpoints never replace an unrelated file, and the demo never writes out
of --out (issue 16)."""

from __future__ import annotations

import builtins
import os
import pickle
import signal
import subprocess
import sys

import pytest
import torch

import pyrovi
import pyrovi._files as files
import pyrovi.checkpoint as ckpt_module
from pyrovi.errors import CheckpointError
from tests.vi import models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.filterwarnings("ignore::pyrovi.errors.ConvergenceWarning")


class Payload:
    """A pickle that creates the file ``marker`` when it is unpickled."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def _fit(path, **kwargs):
    X, y = models.regression_data()
    config = dict(seed=0, num_steps=100, progress=False, checkpoint=path, checkpoint_every=50)
    config.update(kwargs)
    return pyrovi.VI(models.regression, "meanfield", **config).run(X, y)


# ------------------------------------------------------------- no code from a checkpoint
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_planted_pickle_payload_is_not_run(tmp_path):
    marker = tmp_path / "pwned"
    # a plain torch.save pickle (what pyrovi used to write), payload inside
    plain = tmp_path / "plain.ckpt"
    torch.save({"format": 1, "kind": "vi", "config": Payload(str(marker))}, plain)
    with pytest.raises(CheckpointError, match=r"not a pyrovi checkpoint .*can run code"):
        pyrovi.resume(plain)
    # the payload behind a valid pyrovi header
    headed = tmp_path / "headed.ckpt"
    body = pickle.dumps({"format": 2, "kind": "vi", "config": Payload(str(marker))})
    torch.save({"x": Payload(str(marker))}, tmp_path / "body.pt")
    for blob in (body, (tmp_path / "body.pt").read_bytes()):
        headed.write_bytes(ckpt_module.MAGIC + b"format=2 pyrovi=0.1.0\n" + blob)
        with pytest.raises(CheckpointError, match=r"not a readable pyrovi checkpoint"):
            pyrovi.resume(headed)
    assert not marker.exists()
    # the payload really runs when loaded the old way, so the test above means something
    torch.load(plain, weights_only=False)
    assert marker.exists()


def test_a_checkpoint_naming_a_dangerous_callable_is_refused(tmp_path):
    path = tmp_path / "a.ckpt"
    _fit(path)
    raw = ckpt_module._read(str(path))
    raw["config"]["model"] = {"__ref__": "os:system"}

    def write(fh):
        fh.write(ckpt_module.MAGIC + b"format=2 pyrovi=0.1.0\n")
        torch.save(raw, fh)

    files.atomic_write(path, write)
    with pytest.raises(CheckpointError, match=r"'os:system', which is neither a function"):
        pyrovi.resume(path)


def test_a_checkpoint_stores_only_plain_data(tmp_path):
    path = tmp_path / "a.ckpt"
    _fit(path)
    body = path.read_bytes().split(b"\n", 2)[2]
    import io

    data = torch.load(io.BytesIO(body), weights_only=True)  # would raise on any object
    assert data["config"]["model"] == {"__ref__": "tests.vi.models:regression"}


# ------------------------------------------------------------------- temporary files
def test_a_symlink_planted_at_the_old_temporary_name_is_not_followed(tmp_path):
    path = tmp_path / "fit.ckpt"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for pid in range(os.getpid() - 5, os.getpid() + 50):  # the old predictable names
        os.symlink(victim, f"{path}.tmp-{pid}")
    _fit(path)
    assert victim.read_text() == "precious"
    assert ckpt_module.load_checkpoint(path).step == 100


def test_a_symlink_at_the_checkpoint_path_is_replaced_not_written_through(tmp_path):
    path = tmp_path / "fit.ckpt"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.symlink(victim, path)
    with pytest.raises(CheckpointError, match=r"exists and is not a regular file"):
        pyrovi.VI(models.regression, checkpoint=path)
    _fit(path, overwrite=True)
    assert victim.read_text() == "precious"
    assert not os.path.islink(path) and ckpt_module.is_checkpoint(path)


def test_a_failed_write_leaves_no_temporary_file_and_the_target_intact(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def fail(fh):
        fh.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        files.atomic_write(target, fail)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_leftovers_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "out.bin"
    code = (
        "import os, signal, pyrovi._files as f\n"
        f"f.atomic_write({str(target)!r}, lambda fh: (fh.write(b'x'), fh.flush(), "
        "os.kill(os.getpid(), signal.SIGKILL)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
    assert proc.returncode == -signal.SIGKILL
    left = [n for n in os.listdir(tmp_path) if n.startswith(files.TEMP_PREFIX)]
    assert len(left) == 1 and not target.exists()
    mine = tmp_path / f"{files.TEMP_PREFIX}{os.getpid()}-inprogress"
    mine.write_bytes(b"a live writer's file")
    files.atomic_write(target, lambda fh: fh.write(b"new"))
    assert target.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == sorted(["out.bin", mine.name])


# ------------------------------------------------------------------- overwriting files
def test_checkpoint_refuses_to_replace_an_unrelated_file(tmp_path):
    path = tmp_path / "thesis.tex"
    path.write_text("years of work")
    with pytest.raises(CheckpointError, match=r"not a pyrovi checkpoint; refusing to overwrite"):
        pyrovi.VI(models.regression, checkpoint=path)
    with pytest.raises(CheckpointError, match=r"not a pyrovi checkpoint; refusing to overwrite"):
        pyrovi.EM(pyrovi.em.gaussian_mixture_model(2), checkpoint=path)
    assert path.read_text() == "years of work"
    pyrovi.VI(models.regression, checkpoint=path, overwrite=True)  # told to


def test_checkpoint_refuses_to_replace_a_checkpoint_of_another_model(tmp_path):
    path = tmp_path / "fit.ckpt"
    _fit(path)
    with pytest.raises(CheckpointError, match=r"checkpoint of another model .*overwrite=True"):
        pyrovi.VI(models.normal_normal, checkpoint=path)
    pyrovi.VI(models.regression, checkpoint=path)  # the same model: a new run may replace it
    pyrovi.VI(models.normal_normal, checkpoint=path, overwrite=True)


def test_checkpoint_path_that_is_a_folder_is_refused_at_construction(tmp_path):
    with pytest.raises(ValueError, match=r"checkpoint=.* is a folder; pass a file path"):
        pyrovi.VI(models.regression, checkpoint=tmp_path)
    with pytest.raises(ValueError, match=r"checkpoint=.* is a folder"):
        pyrovi.EM(pyrovi.em.gaussian_mixture_model(2), checkpoint=tmp_path)


# ------------------------------------------------------------------------ resuming
def test_resume_refuses_other_data_of_the_same_shape(tmp_path):
    path = tmp_path / "fit.ckpt"
    _fit(path)
    X, y = models.regression_data()
    with pytest.raises(CheckpointError, match=r"written for other data.*allow_other_data=True"):
        pyrovi.resume(path, num_steps=150).run(X, y + 1.0)
    with pytest.raises(CheckpointError, match=r"written for other data"):
        pyrovi.resume(path, num_steps=150).run(X * 2.0, y)
    result = pyrovi.resume(path, num_steps=150, allow_other_data=True).run(X, y + 1.0)
    assert result.num_steps == 150


def test_a_moved_checkpoint_is_written_where_it_is_now(tmp_path):
    old, new = tmp_path / "old.ckpt", tmp_path / "moved" / "new.ckpt"
    new.parent.mkdir()
    _fit(old)
    os.replace(old, new)
    X, y = models.regression_data()
    pyrovi.resume(new, num_steps=200).run(X, y)
    assert not old.exists()
    assert ckpt_module.load_checkpoint(new).step == 200


# ----------------------------------------------------------------------------- demo
def test_demo_refuses_a_planted_symlink_that_leaves_out_even_with_force(tmp_path):
    from pyrovi.demo import run_demo

    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.md"
    victim.write_text("precious")
    os.symlink(victim, out / "report.md")
    with pytest.raises(SystemExit, match=r"report.md.* symbolic link .*outside"):
        run_demo(out=str(out), quick=True, force=True)
    assert victim.read_text() == "precious"


def test_demo_files_replace_a_link_inside_out_instead_of_writing_through_it(tmp_path):
    from pyrovi.demo import _save_figure, _target

    out = tmp_path / "out"
    out.mkdir()
    (out / "real.png").write_bytes(b"other")
    os.symlink(out / "real.png", out / "fit_elbo.png")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    _save_figure(fig, _target(str(out), "fit_elbo.png"))
    plt.close(fig)
    assert (out / "real.png").read_bytes() == b"other"
    assert not os.path.islink(out / "fit_elbo.png")
