"""Streaming EM (``EM.stream``): exact batch EM over chunks equals in-memory EM; online EM
(Cappe-Moulines) reaches the batch optimum in a few passes; sources and errors."""

import numpy as np
import pytest
import torch

import pyrovi
from pyrovi.em import (
    EM,
    OnlineEM,
    chunked,
    factor_analysis_model,
    gaussian_mixture_model,
    ppca_model,
)
from pyrovi.errors import FitError

INIT = {
    "weights": [0.3, 0.3, 0.4],
    "means": [[5.0, 1.0], [1.0, 0.0], [0.0, 5.0]],
}


def _blobs(n=2000, seed=0):
    """Three well-separated 2-D blobs, rows in random order."""
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([
        torch.randn(n, 2, generator=g) + torch.tensor([6.0, 0.0]),
        0.5 * torch.randn(n, 2, generator=g),
        torch.randn(n, 2, generator=g) @ torch.tensor([[1.0, 0.5], [0.0, 0.7]])
        + torch.tensor([0.0, 6.0]),
    ])
    return x[torch.randperm(x.shape[0], generator=g)]


def _gmm(cov):
    covs = torch.eye(2).expand(3, 2, 2).clone() if cov == "full" else torch.ones(3, 2)
    return gaussian_mixture_model(3, cov, init={**INIT, "covariances": covs})


def _memmap(tmp_path, x):
    path = tmp_path / "x.npy"
    np.save(path, x.numpy())
    return path, np.load(path, mmap_mode="r")


def _close(a, b, rtol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=rtol, atol=1e-9, err_msg=k)


@pytest.mark.parametrize("cov", ["full", "diag"])
def test_batch_gmm_on_a_memmap_of_10_chunks_equals_in_memory_em(tmp_path, cov):
    x = _blobs()
    _, mm = _memmap(tmp_path, x)
    chunks = chunked(mm, 600)
    assert len(chunks) == 10
    fit = EM(_gmm(cov), num_steps=25, tol=0, progress=False, seed=1)
    ref, got = fit.run(x), fit.stream(chunks)
    assert got.num_steps == ref.num_steps == 25 and got.num_obs == x.shape[0]
    np.testing.assert_allclose(got.log_evidence_trace, ref.log_evidence_trace, rtol=1e-6)
    assert got.log_evidence == pytest.approx(ref.log_evidence, rel=1e-6)
    _close(got.params, ref.params)
    # batch EM: the log evidence never decreases
    assert np.all(np.diff(got.log_evidence_trace) >= -1e-9 * abs(got.log_evidence))


@pytest.mark.parametrize("make", [factor_analysis_model, ppca_model])
def test_batch_factor_models_stream_the_data_once_and_equal_in_memory_em(tmp_path, make):
    g = torch.Generator().manual_seed(3)
    y = torch.randn(3000, 2, generator=g) @ torch.randn(2, 6, generator=g)
    y = y + 0.3 * torch.randn(3000, 6, generator=g) + 5.0
    path, _ = _memmap(tmp_path, y)
    reads = []

    def source():  # a chunk factory over the .npy file, counting the passes
        reads.append(1)
        return iter(chunked(path, 300))

    fit = EM(make(2), num_steps=40, tol=0, progress=False, seed=3)
    ref, got = fit.run(y), fit.stream(source)
    np.testing.assert_allclose(got.log_evidence_trace, ref.log_evidence_trace, rtol=1e-6)
    _close(got.params, ref.params)
    assert len(reads) == 1  # the mean and covariance are all these models need
    assert np.all(np.diff(got.log_evidence_trace) >= -1e-9 * abs(got.log_evidence))


def test_sources_agree_npy_path_dataloader_list_and_factory(tmp_path):
    x = _blobs(500)
    path, mm = _memmap(tmp_path, x)
    fit = EM(_gmm("full"), num_steps=8, tol=0, progress=False, seed=0)
    ref = fit.stream(chunked(mm, 250)).log_evidence_trace
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=250)
    for source in (chunked(path, 400), loader, list(x.split(100)), lambda: iter(x.split(333)),
                   path):
        np.testing.assert_allclose(fit.stream(source).log_evidence_trace, ref, rtol=1e-10)


def test_online_em_is_within_0_1_percent_of_the_batch_optimum_in_2_passes():
    x = _blobs(5000, seed=4)  # 15000 rows, 60 chunks of 250
    batch = EM(_gmm("full"), num_steps=200, tol=1e-8, progress=False, seed=0).stream(
        chunked(x, 250))
    assert batch.converged
    online = EM(_gmm("full"), progress=False, seed=0).stream(
        chunked(x, 250), online=OnlineEM(alpha=0.6, t0=2.0, num_passes=2))
    assert online.num_steps == 2 and len(online.log_evidence_trace) == 2
    gap = (batch.log_evidence - online.log_evidence) / abs(batch.log_evidence)
    assert -1e-9 < gap < 1e-3
    np.testing.assert_allclose(online.params["weights"].sort().values,
                               batch.params["weights"].sort().values, atol=0.01)


def test_online_em_takes_a_one_shot_generator_for_one_pass():
    x = _blobs(1000)
    gen = (c for c in x.split(200))
    res = EM(_gmm("diag"), progress=False, seed=0).stream(gen, online=OnlineEM())
    assert res.num_steps == 1 and res.num_obs == 3000
    batch = EM(_gmm("diag"), num_steps=100, progress=False, seed=0).stream(x.split(200))
    # one pass over 15 chunks: near the optimum (the log evidence is the pass's estimate)
    assert res.log_evidence == pytest.approx(batch.log_evidence, rel=0.05)


def test_one_shot_generator_is_refused_by_batch_em():
    x = _blobs(200)
    with pytest.raises(ValueError, match="one-shot iterator .* batch EM reads the data once "
                                         "per iteration. Pass a re-iterable source"):
        EM(_gmm("full"), progress=False).stream(c for c in x.split(100))
    with pytest.raises(ValueError, match="num_passes=2 reads it more than once"):
        EM(_gmm("full"), progress=False).stream((c for c in x.split(100)),
                                                online=OnlineEM(num_passes=2))


def test_progress_false_writes_nothing_and_true_shows_chunks(capsys):
    x = _blobs(200)
    EM(_gmm("full"), num_steps=2, tol=0, progress=False).stream(chunked(x, 100))
    assert capsys.readouterr().err == ""
    EM(_gmm("full"), num_steps=2, tol=0, progress=True).stream(chunked(x, 100))
    assert "EM iteration 1" in capsys.readouterr().err


def test_checkpoint_resumes_to_the_uninterrupted_fit(tmp_path):
    x = _blobs(500)
    path = tmp_path / "fit.ckpt"
    straight = EM(_gmm("full"), num_steps=12, tol=0, progress=False, seed=2).stream(
        chunked(x, 300))
    EM(_gmm("full"), num_steps=6, tol=0, progress=False, seed=2, checkpoint=path,
       checkpoint_every=3).stream(chunked(x, 300))
    resumed = pyrovi.resume(path, num_steps=12)
    resumed.progress = False
    got = resumed.stream(chunked(x, 300))
    np.testing.assert_allclose(got.log_evidence_trace, straight.log_evidence_trace, rtol=1e-12)
    with pytest.raises(pyrovi.errors.CheckpointError, match="streamed fit .* "
                                                            r"pyrovi.resume\(path\).stream"):
        pyrovi.resume(path).run(x)


def test_a_failing_chunk_keeps_the_last_iteration(tmp_path):
    x = _blobs(300)
    passes = []

    def source():
        passes.append(1)
        for i, c in enumerate(x.split(300)):
            if len(passes) == 4 and i == 1:
                raise OSError("disk read failed")
            yield c

    with pytest.raises(FitError, match="raised OSError at iteration 3: disk read failed") as err:
        EM(_gmm("full"), num_steps=10, tol=0, progress=False).stream(source)
    assert err.value.result.num_steps == 3 and len(err.value.result.log_evidence_trace) == 3


def test_streamed_result_has_no_per_row_posterior():
    res = EM(_gmm("full"), num_steps=2, tol=0, progress=False).stream(chunked(_blobs(100), 100))
    assert res.posterior is None and res.params["means"].shape == (3, 2)
    with pytest.raises(ValueError, match="EMResult.sample needs the per-row posterior"):
        res.sample(3)


def test_bad_configurations_are_refused_before_any_pass():
    x = _blobs(100)

    def model(data):
        pass

    with pytest.raises(ValueError, match="EM.stream fits pyrovi's ready models"):
        EM(model).stream(x)
    with pytest.raises(ValueError, match="got num_inits=2"):
        EM(_gmm("full"), num_inits=2).stream(x)
    with pytest.raises(ValueError, match="online EM brings nothing"):
        EM(factor_analysis_model(1)).stream(torch.randn(50, 3), online=OnlineEM())
    with pytest.raises(ValueError, match=r"alpha must be in \(0.5, 1\]"):
        OnlineEM(alpha=0.5)
    with pytest.raises(ValueError, match="chunk 1 has 3 columns; the first chunk had 2"):
        EM(_gmm("full"), progress=False).stream([x[:50], torch.randn(50, 3)])
    with pytest.raises(pyrovi.errors.ModelError, match="chunk 1 holds non-finite"):
        EM(_gmm("full"), progress=False).stream([x[:50], torch.full((5, 2), float("nan"))])
    with pytest.raises(TypeError, match="chunks must be an iterable of 2-D tensors"):
        EM(_gmm("full")).stream(3)
    with pytest.raises(ValueError, match="rows must be a positive int"):
        chunked(x, 0)
