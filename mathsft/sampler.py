"""A model's answers to problem rows, as a job samples them: from the sample store (mathsft.journal) where it holds
them, else from a server, the user's or a managed vLLM server started only when some sample is missing. The
teacher stage (mathsft.teacher) and evaluation (mathsft.sample_eval) both sample through it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Mapping

from mathsft.generate import ClientSettings, Sampling, journal_fingerprint, problem_key, sample
from mathsft.journal import SampleStore, hold_output
from mathsft.prompts import build_messages
from mathsft.serve import external_endpoint, serving
from mathsft.turns import prompt_prefills_think

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    """The server a job's requests go to: the user's at `endpoint`, else a managed vLLM server the job starts."""

    model: str  # at an endpoint, the name that server knows; else the path or hub id the managed server loads
    endpoint: str | None = None  # base URL of the user's OpenAI-compatible server
    api_key: str | None = None  # the key of the user's server (a managed server makes its own)
    # The rest is for a managed server only.
    revision: str | None = None  # the hub commit of `model` it loads, tokenizer included (default: the main branch)
    # A local copy of `model` at `revision` that it loads instead (the workflow's model store: mathsft.hub_models),
    # under the name `model`; `model` and `revision` stay what the job samples, in records and fingerprints.
    weights: str | None = None
    served_model_name: str | None = None  # the name it serves the model under (default: `model`)
    args: tuple[str, ...] = ()  # more vLLM arguments
    env: Mapping[str, str] = field(default_factory=dict)
    log: str | None = None  # where its output goes (default: beside the job's output)
    health_timeout_s: float  # how long it may take to answer before the job fails

    def managed_args(self) -> list[str]:
        """The vLLM arguments that decide what the managed server samples: `args`, and `revision` for the weights
        and the tokenizer (part of the sample store's fingerprint)."""
        revision = ["--revision", self.revision, "--tokenizer-revision", self.revision] if self.revision else []
        return list(self.args) + revision

    def launch(self) -> tuple[str, str | None, str | None]:
        """How the managed server starts (with `args`): the model folder or id it loads, at which revision, under
        which name. A local copy (`weights`) is that revision: loaded as it is, served as `model`."""
        if self.weights:
            return self.weights, None, self.served_model_name or self.model
        return self.model, self.revision, self.served_model_name

    def tokenizer_source(self) -> tuple[str, str | None]:
        """Where the managed server's tokenizer is read here, and at which revision."""
        return (self.weights, None) if self.weights else (self.model, self.revision)


@dataclass(frozen=True, kw_only=True)
class Sampler:
    """What a job samples and where from: the server, the sampling settings, the prompt template and the API (all
    of which decide the samples), and the client settings (which decide only speed and robustness)."""

    server: ServerSettings
    sampling: Sampling
    prompt_template: str
    api: str  # chat: the server applies the chat template; completions: `tokenizer`'s is applied here
    tokenizer: str | None = None  # the completions API's tokenizer (default: the server's model)
    client: ClientSettings


def model_id_of(server: ServerSettings) -> str:
    """The weights a job samples: what the user's server reports it loaded for the model's name (asked at once, so
    a wrong URL, key or name fails here), else the model a managed server loads."""
    if server.endpoint:
        return external_endpoint(server.endpoint, server.model, server.api_key).model_id
    return server.model


def renderer(sampler: Sampler) -> Callable[[list[dict]], str] | None:
    """None for the chat API; for text completions, messages -> prompt via the tokenizer's chat template."""
    if sampler.api == "chat":
        return None
    from transformers import AutoTokenizer

    source, revision = sampler.server.tokenizer_source()
    tokenizer = (AutoTokenizer.from_pretrained(sampler.tokenizer) if sampler.tokenizer
                 else AutoTokenizer.from_pretrained(source, revision=revision))
    if not tokenizer.chat_template:
        raise SystemExit(f"--api completions: tokenizer {sampler.tokenizer or sampler.server.model} has no chat "
                         "template")
    return lambda messages: tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def think_prefilled(sampler: Sampler, render: Callable[[list[dict]], str] | None, model_id: str,
                    revision: str | None = None) -> bool | None:
    """Whether the job's prompts end inside an opened <think> (R1-style chat templates; mathsft.turns), from the
    chat template that renders them: ours for text completions, else the model's where its files are here (a
    folder, or the Hugging Face cache, which a managed server has filled by the time it serves); None where they
    are not (a user's server on another machine)."""
    if render is None:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(sampler.tokenizer or model_id, revision=revision,
                                                      local_files_only=True)
        except (OSError, ValueError):
            return None
        if not tokenizer.chat_template:
            return None
        render = lambda messages: tokenizer.apply_chat_template(messages, tokenize=False,  # noqa: E731
                                                                add_generation_prompt=True)
    return prompt_prefills_think(render(build_messages("1", sampler.prompt_template)))


def sample_rows(sampler: Sampler, rows: list[dict], output: str, schema,
                sample_store: str | None = None) -> tuple[list[dict], dict]:
    """Sample `samples_per_problem` answers per row, reusing the sample store of `output` (`sample_store`, its
    folder, default: .samples beside it; records of `schema`, found by problem in any output's journal of the same
    model and settings): the server, the user's or a managed one, is reached only when some sample is missing from
    it. Returns the records in (row, sample index) order and the summary of mathsft.generate.sample. Holds the
    output's lock (mathsft.journal.hold_output) from here until the job exits."""
    hold_output(output, sample_store)  # until this job ends: a second job on the same output stops here, naming this one
    render = renderer(sampler)
    server, sampling = sampler.server, sampler.sampling
    model_id = model_id_of(server)
    fingerprint = journal_fingerprint(model_id, sampler.prompt_template, sampling, sampler.api,
                                      [] if server.endpoint else server.managed_args())
    store = SampleStore(output, fingerprint, schema=schema, rows=rows, store=sample_store)
    stored = store.load()
    missing = {(problem_key(row), k) for row in rows for k in range(sampling.samples_per_problem)} - stored.keys()
    if not missing:
        log.info("all %d samples are in the sample store %s: no server needed",
                 len(rows) * sampling.samples_per_problem, store.folder)
        return sample(rows, "", server.model, sampler.prompt_template, sampling, sampler.client, journal=store,
                      render=render, stored=stored)
    loads, revision, served_model_name = server.launch()
    with serving(loads, server.endpoint, server.log or output + ".server.log", list(server.args), dict(server.env),
                 server.health_timeout_s, api_key=server.api_key, served_model_name=served_model_name,
                 revision=revision) as endpoint:
        tokenizer, revision = (model_id, None) if server.endpoint else server.tokenizer_source()
        prefilled = think_prefilled(sampler, render, tokenizer, revision)
        # A local copy is the model it was fetched as: records name that, not the folder the server reports.
        return sample(rows, endpoint.base_url, endpoint.served_model_name, sampler.prompt_template, sampling,
                      sampler.client, api_key=endpoint.api_key, check_alive=endpoint.check_alive, journal=store,
                      render=render, model_id=server.model if server.weights else endpoint.model_id, stored=stored,
                      think_prefilled=prefilled)
