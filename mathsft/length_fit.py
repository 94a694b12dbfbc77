"""Whether the configured lengths fit the student, told before any job: train.max_length against the student's
positions, and a trace of teacher.max_tokens after its prompt against train.max_length. The student's files are
read where they already are (a local folder, an embedded model once converted, the Hugging Face cache), never
downloaded, so a dry run stays offline."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from mathsft.models import EMBEDDED_MODELS, EMBEDDED_PREFIX
from mathsft.prompts import build_messages


@dataclass(frozen=True)
class Student:
    """What the student's files here say about lengths."""

    source: str  # where it was read, for messages
    context: int | None  # max_position_embeddings; None where its config does not say
    folder: Path | None = None  # its config and tokenizer; None where only the context is known


def read_student(model: str, revision: str | None, converted: str | os.PathLike,
                 fetched: str | os.PathLike | None = None) -> Student | None:
    """The student `model` (train.model) as far as it can be read here, or None: an embedded model from its
    converted folder `converted` (results/base_models/NAME) once prepare_model made it, else its declared context;
    a local folder; a hub id from the run's model store (`fetched`, once fetch_model made it), else from the
    Hugging Face cache (nothing is downloaded: not fetched nor cached, not checked)."""
    if model.startswith(EMBEDDED_PREFIX):
        name = model[len(EMBEDDED_PREFIX):]
        if name not in EMBEDDED_MODELS:
            raise ValueError(f"train.model: no embedded model {model!r}; known: "
                             f"{', '.join(EMBEDDED_PREFIX + known for known in EMBEDDED_MODELS)}")
        if (Path(converted) / "config.json").is_file():
            return _folder_student(Path(converted))
        return Student("the embedded model's declared context (mathsft/models.py)",
                       EMBEDDED_MODELS[name].max_position_embeddings)
    if os.path.isdir(model):
        return _folder_student(Path(model))
    if fetched is not None and (Path(fetched) / "config.json").is_file():
        return _folder_student(Path(fetched))
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(model, "config.json", revision=revision)
    except ValueError:  # not a hub id either (HFValidationError): whatever it is, the job that loads it says so
        return None
    return _folder_student(Path(found).parent) if isinstance(found, str) else None


def _folder_student(folder: Path) -> Student:
    config = json.loads((folder / "config.json").read_text())
    context = config.get("max_position_embeddings") or config.get("text_config", {}).get("max_position_embeddings")
    return Student(f"{folder / 'config.json'}", context if isinstance(context, int) else None, folder)


def empty_prompt_tokens(folder: Path, prompt_template: str) -> int | None:
    """Tokens of the shortest prompt: the student's chat template around `prompt_template` with an empty problem,
    up to the generation prompt, counted without added special tokens as training counts a prompt (mathsft.chat);
    None where the folder has no tokenizer.json or chat template. Read with `tokenizers` and Jinja, not
    transformers, whose import would cost every dry run seconds."""
    from tokenizers import Tokenizer

    settings = json.loads((folder / "tokenizer_config.json").read_text()) \
        if (folder / "tokenizer_config.json").is_file() else {}
    template = ((folder / "chat_template.jinja").read_text() if (folder / "chat_template.jinja").is_file()
                else settings.get("chat_template"))
    if not isinstance(template, str) or not (folder / "tokenizer.json").is_file():
        return None
    special = {name: value.get("content") if isinstance(value, dict) else value for name, value in settings.items()
               if name in ("bos_token", "eos_token", "unk_token", "pad_token")}
    text = _chat_template(template).render(messages=build_messages("", prompt_template), add_generation_prompt=True,
                                           tools=None, documents=None, **special)
    return len(Tokenizer.from_file(str(folder / "tokenizer.json")).encode(text, add_special_tokens=False).ids)


def _chat_template(source: str):
    """A chat template compiled as Hugging Face chat templates are documented to be rendered: a sandboxed Jinja
    environment that trims blocks, with loop controls, `raise_exception` and a `tojson` that keeps non-ASCII."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=["jinja2.ext.loopcontrols"])
    environment.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    environment.globals["raise_exception"] = raise_exception
    return environment.from_string(source)


def context_error(max_length: int, model: str, student: Student) -> str | None:
    """The refusal of a train.max_length above the student's positions, or None when it fits (or is unknown)."""
    if student.context is None or max_length <= student.context:
        return None
    return (f"train.max_length: {max_length} is {max_length - student.context} above the student's context: "
            f"train.model {model!r} has max_position_embeddings {student.context} (read from {student.source}); "
            f"lower train.max_length to {student.context} or less, or train a student with a longer context")


def trace_error(max_tokens: int, max_length: int, prompt: int, prompt_template: str, context: int | None) -> str | None:
    """The refusal of a teacher.max_tokens whose trace cannot fit in train.max_length even after the shortest
    prompt (`prompt` tokens), or None when it fits: such a trace is dropped at curation and training, so the cap
    would starve training of the teacher's longest traces, silently."""
    need = prompt + max_tokens
    if need <= max_length:
        return None
    excess, room = need - max_length, max_length - prompt
    dropped = (f"every trace longer than {room} tokens, the teacher's longest, would be dropped at curation and "
               "training" if room >= 1 else "every trace would be dropped at curation and training")
    fixes = [f"lower teacher.max_tokens by {excess} (to {max_tokens - excess})" if room >= 1 else None,
             f"raise train.max_length by {excess} (to {need})" if context is None or need <= context else None]
    fixes = [fix for fix in fixes if fix] or [f"train a student whose context holds {need} tokens"]
    limit = (f"; train.max_length cannot rise past the student's context ({context})"
             if context is not None and need > context else "")
    return (f"teacher.max_tokens: {max_tokens} does not fit in train.max_length ({max_length}): after the shortest "
            f"prompt ({prompt} tokens: the student's chat template around prompt.template {prompt_template!r} with "
            f"an empty problem) a trace of teacher.max_tokens needs {need} tokens, {excess} more, so {dropped}; "
            f"{' or '.join(fixes)}{limit}")


def length_errors(config: dict, converted: str | os.PathLike, fetched: str | os.PathLike | None = None) -> list[str]:
    """Why the configured lengths cannot fit the student (train.model), or []: train.max_length above its
    max_position_embeddings; a teacher.max_tokens that cannot fit in train.max_length after its shortest prompt.
    `converted`: where an embedded student is converted; `fetched`: where a hub student is fetched. Unchecked,
    silently: a hub student neither fetched nor in the cache (both), and one whose tokenizer or chat template is not here (the prompt: a bytes-per-token guess could refuse
    a config that fits)."""
    train, teacher, template = config["train"], config["teacher"], config["prompt"]["template"]
    student = read_student(train["model"], train.get("revision"), converted, fetched)
    if student is None:
        return []
    errors = [context_error(train["max_length"], train["model"], student)]
    prompt = empty_prompt_tokens(student.folder, template) if student.folder else None
    if prompt is not None:
        errors.append(trace_error(teacher["max_tokens"], train["max_length"], prompt, template, student.context))
    return [error for error in errors if error]
