"""The ``pyrovi`` command line: version, plain help, and one-line refusals before any work."""

import os
import subprocess
import sys

import pytest
import torch

from pyrovi import __version__, cli


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"pyrovi {__version__}"


def test_help_is_plain_text(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert "demo" in text and "`" not in text and ":func:" not in text


@pytest.mark.parametrize(
    "device, match",
    [
        ("tpu", r"--device='tpu' is not a device torch knows .*; pass 'cpu', 'cuda' or 'cuda:N'"),
        ("mps", r"--device='mps': pyrovi fits on 'cpu' or 'cuda' only, not on 'mps'"),
        ("nonsense", r"--device='nonsense' is not a device torch knows"),
        ("meta", r"--device='meta': pyrovi fits on 'cpu' or 'cuda' only"),
    ],
)
def test_bad_device_is_refused_before_any_folder_is_made(tmp_path, device, match):
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=match) as exc:
        cli.main(["demo", "--quick", "--out", str(out), "--device", device])
    assert exc.value.code == 2
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_refused(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=r"--device='cuda' was requested but CUDA is not available"):
        cli.main(["demo", "--out", str(out), "--device", "cuda"])
    assert not out.exists()


def test_empty_out_is_refused():
    with pytest.raises(SystemExit, match=r"--out is empty; pass a folder"):
        cli.main(["demo", "--out", ""])


def test_out_under_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match=r"lies under .*file'.*which is a file; pass a folder path"):
        cli.main(["demo", "--out", str(tmp_path / "file" / "sub")])


def test_dangling_symlink_out_is_refused(tmp_path):
    link = tmp_path / "link"
    os.symlink(tmp_path / "missing", link)
    with pytest.raises(SystemExit, match=r"is a symbolic link to .*missing', which does not exist"):
        cli.main(["demo", "--out", str(link)])
    assert not (tmp_path / "missing").exists()


def test_symlink_out_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "link"
    os.symlink(target, link)
    with pytest.raises(SystemExit, match=r"is a symbolic link \(to .*elsewhere'\); pass the folder itself"):
        cli.main(["demo", "--out", str(link)])
    assert os.listdir(target) == []


def test_console_script_prints_one_line_and_exits_2(tmp_path):
    code = "from pyrovi.cli import console; import sys; sys.argv = ['pyrovi', 'demo', '--device', 'mps']; console()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "pyrovi demo: --device='mps': pyrovi fits on 'cpu' or 'cuda' only, not on 'mps'; pass device='cpu' or device='cuda'"
    ]
    assert os.listdir(tmp_path) == []
