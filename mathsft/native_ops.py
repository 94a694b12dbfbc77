"""DeepSpeed's native ops in a training run: the one it would build for nothing is never built, and a build that
cannot link from where torch is installed stops with a clear error instead of a linker's."""

from __future__ import annotations

import logging
import shlex

from mathsft.train_settings import ConfigError

log = logging.getLogger(__name__)

# DeepSpeed's CPU backend builds this op whenever it sets up torch.distributed, for inference_all_reduce alone:
# training's collectives go through torch.distributed (gloo). Building it took minutes on a first start.
UNUSED_OPS = ("deepspeed_shm_comm",)


def skip_unused_ops() -> None:
    """Tell DeepSpeed that the ops training never calls cannot be built here, so it builds none of them."""
    import deepspeed.ops

    compatible = deepspeed.ops.__compatible_ops__  # probed once per process, then consulted before each build
    for name in UNUSED_OPS:
        compatible[name] = False


def unlinkable_reason(torch_lib_path: str) -> str | None:
    """Why PyTorch's extension builder cannot link an op against torch at `torch_lib_path` (None: it can): it writes
    `-L<torch lib>` unquoted into the ninja link command, which a shell runs, so a space splits the path and a quote
    or `$` breaks the command."""
    if shlex.quote(torch_lib_path) != torch_lib_path:
        return (f"torch is installed under a path that a shell must quote ({torch_lib_path}), which PyTorch's "
                "extension builder cannot link against")
    return None


def refuse_unlinkable_builds() -> None:
    """Where a DeepSpeed op could be built but not linked, any build DeepSpeed starts stops at once, naming the op,
    the cause and what to do, before the compiler runs."""
    from deepspeed.ops.op_builder.builder import OpBuilder
    from torch.utils.cpp_extension import TORCH_LIB_PATH

    reason = unlinkable_reason(TORCH_LIB_PATH)
    if reason is None or getattr(OpBuilder.jit_load, "refuses_builds", False):
        return

    def jit_load(builder, verbose=True):
        raise ConfigError(f"DeepSpeed would build its {builder.name} op now, but {reason}. The DeepSpeed JSONs in "
                          "config/deepspeed/ need no built op (torch_adam: true, no offload); use one of them, or "
                          "install the environment under a path without spaces or quotes")

    jit_load.refuses_builds = True
    OpBuilder.jit_load = jit_load
