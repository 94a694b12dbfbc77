"""DeepSpeed's native ops in a training run: the shared-memory op that only inference collectives use is never
built, and under a torch whose path a shell must quote (which PyTorch's extension builder cannot link against) a
build DeepSpeed starts stops at once with an error naming the op and what to do. The training runs themselves:
tests/test_pipeline.py (a newcomer's checkout, venv and empty caches) and tests/test_train_run.py."""

from __future__ import annotations

import pytest

from mathsft.native_ops import UNUSED_OPS, refuse_unlinkable_builds, skip_unused_ops, unlinkable_reason
from mathsft.train_settings import ConfigError


def test_a_torch_path_a_shell_must_quote_makes_a_build_unlinkable():
    assert unlinkable_reason("/opt/venv/lib/python3.11/site-packages/torch/lib") is None
    for path in ("/home/a user/x/torch/lib", "/home/o'brien/torch/lib", "/srv/tab\there/torch/lib", "/srv/$HOME/lib"):
        assert path in unlinkable_reason(path) and "cannot link" in unlinkable_reason(path)


def test_the_shared_memory_op_is_marked_unbuildable_so_deepspeed_skips_it():
    import deepspeed.ops
    from deepspeed.comm.torch import build_shm_op

    skip_unused_ops()
    assert UNUSED_OPS == ("deepspeed_shm_comm",)
    assert deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] is False
    assert build_shm_op() is None  # what DeepSpeed's torch backend calls when it is set up: no build


def test_a_build_under_a_path_with_a_space_stops_naming_the_op_and_the_fix(monkeypatch):
    import torch.utils.cpp_extension
    from deepspeed.ops.op_builder.builder import OpBuilder
    from deepspeed.ops.op_builder.cpu import FusedAdamBuilder

    monkeypatch.setattr(torch.utils.cpp_extension, "TORCH_LIB_PATH", "/home/a user/.venv/torch/lib")
    monkeypatch.setattr(OpBuilder, "jit_load", OpBuilder.jit_load)  # restored after the test
    refuse_unlinkable_builds()
    with pytest.raises(ConfigError) as refused:
        FusedAdamBuilder().load()
    message = str(refused.value)
    assert "fused_adam" in message and "/home/a user/.venv/torch/lib" in message and "torch_adam: true" in message


def test_builds_are_left_alone_where_they_can_link(monkeypatch):
    import torch.utils.cpp_extension
    from deepspeed.ops.op_builder.builder import OpBuilder

    monkeypatch.setattr(torch.utils.cpp_extension, "TORCH_LIB_PATH", "/opt/venv/torch/lib")
    original = OpBuilder.jit_load
    refuse_unlinkable_builds()
    assert OpBuilder.jit_load is original
