"""Settings that cannot fit are refused before any job: train.max_length against the student's context, and a
trace of teacher.max_tokens after its shortest prompt against train.max_length (mathsft/length_fit.py, called by
rules/common.smk's check_config at DAG build)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from helpers.workflow import REPO, edited_config, snakemake

from mathsft.length_fit import empty_prompt_tokens, length_errors, read_student, trace_error
from mathsft.models import EMBEDDED_MODELS
from mathsft.prompts import build_messages

TINY = REPO / "tests" / "configs" / "tiny.yaml"
STUDENT = "smollm2-135m-instruct"


def lengths(model=f"embedded:{STUDENT}", max_length=512, max_tokens=160) -> dict:
    """The keys length_errors reads, as the validated config holds them."""
    return {"train": {"model": model, "revision": None, "max_length": max_length},
            "teacher": {"max_tokens": max_tokens}, "prompt": {"template": "boxed_cot_v1"}}


@pytest.mark.parametrize("name", sorted(EMBEDDED_MODELS))
def test_an_embedded_models_declared_context_and_prompt_count_are_those_of_its_converted_folder(name, request):
    """The declared context (known before conversion) is the converted config's; the shortest prompt, counted with
    `tokenizers` and Jinja, is what transformers counts, as training does (mathsft.chat)."""
    from transformers import AutoTokenizer

    folder = request.getfixturevalue("student_dir" if name == STUDENT else "teacher_dir")
    config = json.loads((folder / "config.json").read_text())
    assert EMBEDDED_MODELS[name].max_position_embeddings == config["max_position_embeddings"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = tokenizer.apply_chat_template(build_messages("", "boxed_cot_v1"), tokenize=False, add_generation_prompt=True)
    assert empty_prompt_tokens(folder, "boxed_cot_v1") == len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_the_student_is_read_where_it_is_and_never_downloaded(tmp_path, student_dir, monkeypatch):
    assert read_student(f"embedded:{STUDENT}", None, tmp_path / "not-converted").context == 8192
    assert read_student(f"embedded:{STUDENT}", None, student_dir).folder == student_dir
    folder = tmp_path / "my student"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"max_position_embeddings": 4096}))
    assert (read_student(str(folder), None, "unused").context, empty_prompt_tokens(folder, "boxed_cot_v1")) == (4096, None)
    # A hub id: only from the Hugging Face cache; not there, not checked (no download on a dry run).
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    assert read_student("Org/Student", None, "unused") is None
    assert length_errors(lengths("Org/Student", max_length=10 ** 6, max_tokens=10 ** 6), "unused") == []
    snapshot = tmp_path / "hub" / "models--Org--Student" / "snapshots" / "abc123"
    shutil.copytree(student_dir, snapshot)
    (tmp_path / "hub" / "models--Org--Student" / "refs").mkdir()
    (tmp_path / "hub" / "models--Org--Student" / "refs" / "main").write_text("abc123")
    student = read_student("Org/Student", None, "unused")
    assert (student.context, student.folder) == (8192, snapshot)
    with pytest.raises(ValueError, match=r"train.model: no embedded model 'embedded:nope'; known: embedded:"):
        read_student("embedded:nope", None, "unused")


def test_a_trace_that_cannot_fit_names_the_keys_and_what_to_change():
    assert trace_error(464, 512, 48, "boxed_cot_v1", 8192) is None
    assert trace_error(465, 512, 48, "boxed_cot_v1", 8192).endswith(
        "lower teacher.max_tokens by 1 (to 464) or raise train.max_length by 1 (to 513)")
    # Past the student's context, raising train.max_length is not offered.
    assert trace_error(9000, 8192, 48, "boxed_cot_v1", 8192).endswith(
        "lower teacher.max_tokens by 856 (to 8144); train.max_length cannot rise past the student's context (8192)")


def dry_run(tmp_path, configfile) -> tuple[int, str]:
    result = snakemake(tmp_path, configfile, "-n", "results/eval.json", timeout=300)
    return result.returncode, result.stdout + result.stderr


def test_a_dry_run_refuses_train_max_length_above_the_embedded_students_context(tmp_path):
    returncode, output = dry_run(tmp_path, edited_config(TINY, tmp_path / "bad.yaml", **{"train.max_length": 16384}))
    assert returncode != 0
    assert (f"train.max_length: 16384 is 8192 above the student's context: train.model 'embedded:{STUDENT}' has "
            "max_position_embeddings 8192 (read from the embedded model's declared context (mathsft/models.py)); "
            "lower train.max_length to 8192 or less") in output, output[-3000:]
    assert not (tmp_path / "results").exists()


def test_a_dry_run_refuses_teacher_max_tokens_that_cannot_fit_in_train_max_length(tmp_path, student_dir):
    """With the student converted (as after a first run): its chat template and tokenizer count the prompt."""
    shutil.copytree(student_dir, tmp_path / "results" / "base_models" / STUDENT, copy_function=os.link)
    returncode, output = dry_run(tmp_path, TINY)
    assert returncode == 0, output[-3000:]
    returncode, output = dry_run(tmp_path, edited_config(TINY, tmp_path / "bad.yaml", **{"teacher.max_tokens": 600}))
    assert returncode != 0
    assert ("teacher.max_tokens: 600 does not fit in train.max_length (512): after the shortest prompt (48 tokens: "
            "the student's chat template around prompt.template 'boxed_cot_v1' with an empty problem) a trace of "
            "teacher.max_tokens needs 648 tokens, 136 more, so every trace longer than 464 tokens, the teacher's "
            "longest, would be dropped at curation and training; lower teacher.max_tokens by 136 (to 464) or raise "
            "train.max_length by 136 (to 648)") in output, output[-3000:]
