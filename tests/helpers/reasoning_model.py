"""A reasoning-style copy of the embedded teacher for tests: its tokenizer knows <think> and </think>, and its chat
template ends the generation prompt with <think> as R1-style templates do, so vLLM's real reasoning parser
(--reasoning-parser deepseek_r1) runs on a CPU. The weights are the embedded teacher's, hard-linked.

<think> takes a spare row of the embedding matrix (the tokenizer's placeholder [PAD151665]): the model reads it in
the prompt. </think> must be something the model writes, and it writes no new token: it is the token ':\n\n' (id
1447: 115 of the tiny config's 128 teacher replies hold it) renamed, its merge removed. Where the embedded teacher
would write ':\n\n', this one writes </think>, the same token id."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

THINK_ID, THINK_SPARE = 151665, "[PAD151665]"
END_THINK_ID, END_THINK_WAS = 1447, (":", "ĊĊ")  # byte-level BPE's spelling of ':\n\n'
GENERATION_PROMPT = "{{- '<|im_start|>assistant\\n' }}"


def _added(content: str) -> dict:
    """An added token that is no special token: decoded into the text, as R1 tokenizers do (its id is the one
    the model vocabulary gives `content`)."""
    return {"id": None, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": False}


def reasoning_copy(model_dir: Path, out: Path) -> Path:
    """The copy in `out` (made once)."""
    if (out / "config.json").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model_dir, tmp, copy_function=os.link)
    for name in ("tokenizer.json", "chat_template.jinja"):  # edited copies, not links to the embedded files
        (tmp / name).unlink()
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    assert vocab.pop(THINK_SPARE) == THINK_ID and vocab.pop("".join(END_THINK_WAS)) == END_THINK_ID, model_dir
    vocab["<think>"], vocab["</think>"] = THINK_ID, END_THINK_ID
    was = "".join(END_THINK_WAS)  # no merge may make or use it now
    tokenizer["model"]["merges"] = [merge for merge in tokenizer["model"]["merges"]
                                    if was not in (*merge, "".join(merge))]
    for content, token_id in (("<think>", THINK_ID), ("</think>", END_THINK_ID)):
        tokenizer["added_tokens"].append(_added(content) | {"id": token_id})
    (tmp / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    template = (model_dir / "chat_template.jinja").read_text()
    assert template.count(GENERATION_PROMPT) == 1, "the embedded teacher's chat template changed"
    (tmp / "chat_template.jinja").write_text(
        template.replace(GENERATION_PROMPT, "{{- '<|im_start|>assistant\\n<think>\\n' }}"))
    tmp.rename(out)
    return out
