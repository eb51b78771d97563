"""Checkpoint and resume: exact continuation across processes, refusals, full disks."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import pyrovi
import pyrovi._files as files_module
import pyrovi.checkpoint as checkpoint_module
from pyrovi.errors import CheckpointError, CheckpointWarning
from tests.vi import models

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.filterwarnings("ignore::pyrovi.errors.ConvergenceWarning")


def _worker(mode, ckpt, out):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, "-m", "tests.vi.resume_worker", mode, str(ckpt), str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )


def test_killed_then_resumed_in_a_fresh_process_is_bit_identical(tmp_path):
    full = _worker("full", tmp_path / "full.ckpt", tmp_path / "full.pt")
    assert full.returncode == 0, full.stderr
    killed = _worker("killed", tmp_path / "run.ckpt", tmp_path / "never.pt")
    assert killed.returncode == 17, killed.stderr
    assert not (tmp_path / "never.pt").exists()
    saved = checkpoint_module.load_checkpoint(tmp_path / "run.ckpt")
    assert saved.step == 100 and len(saved.trace) == 100
    resumed = _worker("resume", tmp_path / "run.ckpt", tmp_path / "resumed.pt")
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(tmp_path / "full.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed.pt", weights_only=False)
    assert len(a["trace"]) == 300
    np.testing.assert_array_equal(a["trace"], b["trace"])
    assert a["params"].keys() == b["params"].keys()
    for name in a["params"]:
        assert torch.equal(a["params"][name], b["params"][name]), name
    assert a["elbo"] == b["elbo"]


def _fit(path, **kwargs):
    X, y = models.regression_data()
    config = dict(seed=0, num_steps=200, progress=False, checkpoint=path, checkpoint_every=100)
    config.update(kwargs)
    return pyrovi.VI(models.regression, config.pop("guide", "meanfield"), **config).run(X, y)


def test_resume_refuses_another_family_model_or_format(tmp_path):
    path = tmp_path / "a.ckpt"
    _fit(path, num_steps=100)
    X, y = models.regression_data()
    with pytest.raises(CheckpointError, match=r"guide family 'meanfield', not 'fullrank'"):
        pyrovi.resume(path, guide="fullrank").run(X, y)
    with pytest.raises(CheckpointError, match=r"written for another model"):
        pyrovi.resume(path).run(X[:, :1], y)
    body = path.read_bytes().split(b"\n", 2)[2]
    (tmp_path / "future.ckpt").write_bytes(b"PYROVI-CHECKPOINT\nformat=99 pyrovi=9.0\n" + body)
    with pytest.raises(CheckpointError, match=r"written by pyrovi 9.0 in checkpoint format 99"):
        pyrovi.resume(tmp_path / "future.ckpt")


def test_corrupted_or_missing_checkpoint_is_refused(tmp_path):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match=r"is not a pyrovi checkpoint .* header"):
        pyrovi.resume(path)
    good = tmp_path / "good.ckpt"
    _fit(good, num_steps=100)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(CheckpointError, match=r"is not a readable pyrovi checkpoint: .*corrupt"):
        pyrovi.resume(truncated)
    with pytest.raises(CheckpointError, match=r"no checkpoint at"):
        pyrovi.resume(tmp_path / "absent.ckpt")


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "disk.ckpt"
    calls = {"n": 0}

    class FullDisk:
        def __init__(self, fd, mode):
            self.fh = os.fdopen(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            raise OSError(28, "No space left on device")

        def flush(self):
            pass

        def fileno(self):
            return self.fh.fileno()

    def opener(fd):
        calls["n"] += 1
        return os.fdopen(fd, "wb") if calls["n"] == 1 else FullDisk(fd, "wb")

    monkeypatch.setattr(files_module, "_fdopen", opener)
    with pytest.warns(CheckpointWarning, match=r"could not write checkpoint .* at step 200"):
        result = _fit(path)
    assert result.num_steps == 200  # training went on
    assert checkpoint_module.load_checkpoint(path).step == 100  # the old one is intact
    assert not [f for f in os.listdir(tmp_path) if f.startswith(files_module.TEMP_PREFIX)]


def local_model_factory():
    def local_model(y):
        models.normal_normal(y)

    return local_model


def test_a_local_model_must_be_passed_again_to_resume(tmp_path):
    local_model = local_model_factory()
    path = tmp_path / "x.ckpt"
    y = models.normal_normal_data()
    pyrovi.VI(local_model, seed=0, num_steps=100, progress=False, checkpoint=path,
              checkpoint_every=50).run(y)
    with pytest.raises(CheckpointError, match=r"does not hold the model .*local_model.*"
                                              r"pass model= to pyrovi.resume"):
        pyrovi.resume(path)
    resumed = pyrovi.resume(path, model=local_model, num_steps=150).run(y)
    assert resumed.num_steps == 150


def test_checkpoint_folder_must_exist(tmp_path):
    with pytest.raises(ValueError, match=r"does not exist or is not writable"):
        pyrovi.VI(models.normal_normal, checkpoint=tmp_path / "no" / "x.ckpt")
