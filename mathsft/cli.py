"""Command-line options shared by the scripts that sample from a model (teacher and evaluation)."""

from __future__ import annotations

import argparse
import logging
import os

from mathsft.generate import ClientSettings, Sampling, journal_fingerprint, sample
from mathsft.journal import Journal, store_path
from mathsft.serve import check_no_secrets, external_endpoint, serving
from mathsft.settings import add_dataclass_arguments, from_args


def setup_logging() -> None:
    """One format for every script's log; the HTTP client's per-request lines are left out."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    """The sampling options: Sampling's fields, the prompt template and the API."""
    group = parser.add_argument_group("sampling (changes the outputs)")
    add_dataclass_arguments(group, Sampling, exclude=("ignore_eos",))
    group.add_argument("--prompt_template", default="boxed_cot_v1")
    group.add_argument("--api", choices=["chat", "completions"], default="chat",
                       help="chat: the server applies the chat template; completions: it is applied here "
                            "with --tokenizer's template and sent as plain text")
    group.add_argument("--tokenizer", default=None, help="tokenizer for --api completions (default: --model)")


def add_server_args(parser: argparse.ArgumentParser, model_required: bool = True) -> None:
    """The server options (a managed vLLM server or the user's) and ClientSettings' fields."""
    group = parser.add_argument_group("server and client")
    group.add_argument("--model", required=model_required,
                       help="with --endpoint: the model's name on that server; else the model path or Hugging Face "
                            "id the managed server loads")
    group.add_argument("--revision", default=None,
                       help="managed server only: the hub commit of --model (a hub id) that vLLM loads, tokenizer "
                            "included (default: the hub's main branch; a local folder is loaded as it is)")
    group.add_argument("--served_model_name", default=None,
                       help="managed server only: the name it serves the model under (default: --model)")
    group.add_argument("--endpoint", default=None,
                       help="base URL of a running OpenAI-compatible server, e.g. http://host:8000/v1; "
                            "without it this job starts and stops its own vLLM server, with a key of its own")
    group.add_argument("--api_key_env", default=None,
                       help="--endpoint only: name of the environment variable holding that server's API key")
    group.add_argument("--server_arg", action="append", default=[], help="extra vLLM server argument (repeatable)")
    group.add_argument("--server_env", action="append", default=[], metavar="KEY=VALUE",
                       help="environment for the vLLM server (repeatable)")
    group.add_argument("--server_log", default=None, help="where the managed server's output goes")
    group.add_argument("--health_timeout_s", type=float, default=600.0,
                       help="seconds a managed server may take to answer before the job fails")
    add_dataclass_arguments(group, ClientSettings, exclude=("backoff_base_s", "backoff_max_s"))


def renderer_from_args(args):
    """None for the chat API; for text completions, messages -> prompt via the tokenizer's chat template."""
    if args.api == "chat":
        return None
    from transformers import AutoTokenizer

    tokenizer = (AutoTokenizer.from_pretrained(args.tokenizer) if args.tokenizer
                 else AutoTokenizer.from_pretrained(args.model, revision=args.revision))
    if not tokenizer.chat_template:
        raise SystemExit(f"--api completions: tokenizer {args.tokenizer or args.model} has no chat template")
    return lambda messages: tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def api_key_from_args(args) -> str | None:
    if not args.api_key_env:
        return None
    if args.api_key_env not in os.environ:
        raise SystemExit(f"--api_key_env names {args.api_key_env!r}, which is not set in the environment")
    return os.environ[args.api_key_env]


def serving_from_args(args, default_log: str):
    """The serving context (mathsft.serve.serving) the options describe; it yields an Endpoint."""
    env = {}
    for item in args.server_env:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--server_env {item!r}: expected KEY=VALUE")
        env[key] = value
    if args.api_key_env and not args.endpoint:
        raise SystemExit("--api_key_env is for a server you run (--endpoint); a managed server makes its own key")
    try:
        check_no_secrets(args.server_arg, env, "--server_arg/--server_env")
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    return serving(args.model, args.endpoint, args.server_log or default_log, managed_server_args(args), env,
                   args.health_timeout_s, api_key=api_key_from_args(args), served_model_name=args.served_model_name)


def managed_server_args(args) -> list[str]:
    """The vLLM arguments of a managed server: --server_arg, and --revision for the weights and the tokenizer."""
    if args.revision and args.endpoint:
        raise SystemExit("--revision is for a managed server; the server at --endpoint decides what it loaded")
    revision = ["--revision", args.revision, "--tokenizer-revision", args.revision] if args.revision else []
    return list(args.server_arg) + revision


def model_id_from_args(args) -> str:
    """The weights a job samples: what the user's server reports it loaded for --model (asked at once, so a wrong
    URL, key or name fails here), else the --model a managed server loads."""
    if args.endpoint:
        return external_endpoint(args.endpoint, args.model, api_key_from_args(args)).model_id
    return args.model


def sample_from_args(args, rows: list[dict], output: str, schema, render) -> tuple[list[dict], dict]:
    """Sample --samples_per_problem answers per row, reusing the sample store beside `output` (mathsft.journal):
    the server, the user's or a managed one, is reached only when some sample is missing from it."""
    sampling = from_args(Sampling, args)
    fingerprint = journal_fingerprint(rows, model_id_from_args(args), args.prompt_template, sampling, args.api,
                                      [] if args.endpoint else managed_server_args(args))
    store = Journal(store_path(output, fingerprint), fingerprint, schema=schema)
    stored = store.load()
    missing = [(i, k) for i in range(len(rows)) for k in range(sampling.samples_per_problem) if (i, k) not in stored]
    settings = from_args(ClientSettings, args)
    if not missing:
        logging.getLogger(__name__).info("all %d samples are in the sample store %s: no server needed",
                                         len(rows) * sampling.samples_per_problem, store.path)
        return sample(rows, "", args.model, args.prompt_template, sampling, settings, journal=store, render=render,
                      stored=stored)
    with serving_from_args(args, default_log=output + ".server.log") as endpoint:
        return sample(rows, endpoint.base_url, endpoint.served_model_name, args.prompt_template, sampling, settings,
                      api_key=endpoint.api_key, check_alive=endpoint.check_alive, journal=store, render=render,
                      model_id=endpoint.model_id, stored=stored)
