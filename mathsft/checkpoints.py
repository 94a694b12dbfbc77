"""A training run's states on disk: resumable DeepSpeed checkpoints in a scratch folder (with the metrics written
so far), and the finished model exported as a Hugging Face folder whose EOS is the template's end of turn."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from mathsft.rank_logs import EVERY_RANK

log = logging.getLogger(__name__)


class Checkpoints:
    """DeepSpeed checkpoints of one run in a scratch folder, with the metrics written so far; only the last
    one is kept. A folder written for other settings or data is discarded, never resumed from."""

    def __init__(self, folder: str, fingerprint: str, rank: int):
        self.folder = Path(folder) if folder else None
        self.fingerprint, self.rank = fingerprint, rank

    def metrics_path(self, fallback: str) -> Path:
        return self.folder / "metrics.jsonl" if self.folder else Path(fallback + ".partial")

    def resume(self, engine) -> int:
        """Load the last checkpoint into `engine`; returns the optimizer steps already done (0: fresh)."""
        if not self.folder or not (self.folder / "latest").is_file():
            return 0
        stamp = self.folder / "fingerprint"
        if not stamp.is_file() or stamp.read_text() != self.fingerprint:
            log.warning("checkpoints in %s are for other settings or data: starting over", self.folder)
            return 0
        _, client_state = engine.load_checkpoint(str(self.folder))
        log.info("resumed from %s at step %d", self.folder, client_state["step"], extra=EVERY_RANK)
        return int(client_state["step"])

    def prepare(self, resumed_step: int) -> None:
        """Fresh run: empty the folder. Resumed run: keep the metrics up to the resumed step only."""
        if not self.folder or self.rank != 0:
            return
        if resumed_step == 0:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True)
            (self.folder / "fingerprint").write_text(self.fingerprint)
            return
        path = self.folder / "metrics.jsonl"
        kept, unreadable = [], 0
        # A run killed while writing leaves a torn last line (cut JSON, a cut UTF-8 character): skipped and
        # counted, never a reason to give up the checkpoint. A step's line comes before its checkpoint, so a
        # torn step line is one that is trained and recorded again.
        for line in path.read_bytes().splitlines() if path.is_file() else []:
            try:
                entry = json.loads(line.decode("utf-8"))
                step = entry["step"]
                if not isinstance(step, int):
                    raise TypeError(step)
            except (UnicodeDecodeError, ValueError, TypeError, KeyError):
                unreadable += 1
                continue
            if step <= resumed_step:
                kept.append(line + b"\n")
        if unreadable:
            log.warning("%s: %d unreadable line(s) skipped (a run killed mid-write); metrics kept up to step %d",
                        path, unreadable, resumed_step)
        path.write_bytes(b"".join(kept))

    def save(self, engine, step: int) -> None:
        import torch.distributed as dist

        tag = f"step{step:08d}"
        engine.save_checkpoint(str(self.folder), tag=tag, client_state={"step": step})
        dist.barrier()
        if self.rank == 0:
            for old in self.folder.glob("step*"):
                if old.name != tag:
                    shutil.rmtree(old, ignore_errors=True)
        log.info("checkpoint %s", self.folder / tag)

    def finish(self) -> None:
        if self.folder and self.rank == 0:
            shutil.rmtree(self.folder, ignore_errors=True)


def export(engine, tokenizer, end_of_turn: str, end_of_turn_id: int, output_dir: str, rank: int) -> None:
    """Write a Hugging Face folder (ZeRO-3 shards gathered, LoRA adapters merged) whose EOS is the template's
    end of turn, atomically (temporary folder, then rename). Rank 0 writes."""
    import deepspeed
    import torch.distributed as dist

    model = engine.module
    stage3 = engine.zero_optimization_stage() == 3
    with deepspeed.zero.GatheredParameters(list(model.parameters()), enabled=stage3):
        if rank == 0:
            if hasattr(model, "merge_and_unload"):  # LoRA: fold the adapters into the weights
                model = model.merge_and_unload()
            out = Path(output_dir)
            tmp = out.with_name(f".{out.name}.tmp")
            if tmp.exists():
                shutil.rmtree(tmp)
            model.config.eos_token_id = end_of_turn_id
            if model.generation_config is not None:
                model.generation_config.eos_token_id = end_of_turn_id
            tokenizer.eos_token = end_of_turn
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()} if stage3 else None
            model.save_pretrained(tmp, state_dict=state)
            tokenizer.save_pretrained(tmp)
            config_path = tmp / "config.json"  # the packed attention is ours; loaders use their default
            config = json.loads(config_path.read_text())
            config.pop("_attn_implementation", None)
            config_path.write_text(json.dumps(config, indent=2) + "\n")
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
            log.info("exported %s", out)
    if dist.is_initialized():
        dist.barrier()
