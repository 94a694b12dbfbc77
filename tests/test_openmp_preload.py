"""The OpenMP runtime a managed vLLM CPU server preloads, from a venv whose path has a space (mathsft.openmp_preload):
the dynamic loader refuses the library's own path, and loads the link the server gets instead."""

import os
import shutil
import subprocess
from pathlib import Path

from mathsft.openmp_preload import OpenMPPreload, _torch_dir, torch_openmp

REAL_TORCH = _torch_dir()


def spaced_torch(tmp_path: Path) -> Path:
    """A torch folder under a path with a space and a quote, holding a copy of torch's real libgomp."""
    torch_dir = tmp_path / "a user's venv" / "site-packages" / "torch"
    (torch_dir / "lib").mkdir(parents=True)
    library = torch_openmp(REAL_TORCH)
    shutil.copy(library, torch_dir / "lib" / library.name)
    return torch_dir


def loader_errors(preload: str) -> str:
    """What the dynamic loader says when a program starts with LD_PRELOAD=`preload`."""
    return subprocess.run(["/bin/true"], env={**os.environ, "LD_PRELOAD": preload}, capture_output=True,
                          text=True).stderr


def test_a_spaced_venvs_openmp_is_preloaded_through_a_link_without_the_space(tmp_path):
    torch_dir = spaced_torch(tmp_path)
    library = torch_openmp(torch_dir)
    assert "cannot be preloaded" in loader_errors(str(library))  # what vLLM's own preload gets from this venv

    preload = OpenMPPreload({"LD_PRELOAD": ""}, torch_dir=torch_dir, vllm_cpu=True)
    link = Path(preload.env["LD_PRELOAD"])
    assert " " not in str(link) and "libgomp" in link.name  # vLLM sees libgomp preloaded and adds nothing
    assert link.resolve() == library.resolve()
    assert loader_errors(str(link)) == ""
    preload.close()
    assert not link.parent.exists()


def test_a_preload_already_set_is_kept_after_the_link(tmp_path):
    preload = OpenMPPreload({"LD_PRELOAD": "/opt/lib/libtcmalloc.so"}, torch_dir=spaced_torch(tmp_path), vllm_cpu=True)
    assert preload.env["LD_PRELOAD"].endswith(":/opt/lib/libtcmalloc.so")
    preload.close()


def test_nothing_is_added_where_vllms_own_preload_works_or_none_is_wanted(tmp_path):
    spaced = spaced_torch(tmp_path)
    plain = tmp_path / "venv" / "torch"
    shutil.copytree(spaced, plain)
    for environ, torch_dir, vllm_cpu in (({}, plain, True),  # no space: vLLM's own preload works
                                         ({"LD_PRELOAD": "/usr/lib/libgomp.so.1"}, spaced, True),  # the user's own
                                         ({}, spaced, False)):  # a GPU build of vLLM preloads nothing
        preload = OpenMPPreload(environ, torch_dir=torch_dir, vllm_cpu=vllm_cpu)
        assert (preload.env, preload.folder) == ({}, None), (environ, torch_dir, vllm_cpu)
