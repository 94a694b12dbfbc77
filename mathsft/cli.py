"""Command-line options shared by the scripts that sample from a model (teacher and evaluation), and the
mathsft.sampler settings they give."""

from __future__ import annotations

import argparse
import logging
import os

from mathsft.generate import ClientSettings, Sampling
from mathsft.hub_models import NotFetched, model_to_load, workflow_store
from mathsft.rank_logs import LOG_FORMAT
from mathsft.sampler import Sampler, ServerSettings
from mathsft.serve import check_server_settings
from mathsft.settings import add_dataclass_arguments, from_args


def setup_logging() -> None:
    """One format for every script's log; the HTTP client's per-request lines are left out."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
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


def sampler_from_args(args) -> Sampler:
    """The Sampler the sampling and server options describe."""
    return Sampler(server=server_from_args(args), sampling=from_args(Sampling, args),
                   prompt_template=args.prompt_template, api=args.api, tokenizer=args.tokenizer,
                   client=from_args(ClientSettings, args))


def server_from_args(args) -> ServerSettings:
    """The ServerSettings the server options describe; options that contradict each other, a --server_env that is
    not KEY=VALUE, a key among the server's arguments and an unset --api_key_env are refused here."""
    env = {}
    for item in args.server_env:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--server_env {item!r}: expected KEY=VALUE")
        env[key] = value
    if args.api_key_env and not args.endpoint:
        raise SystemExit("--api_key_env is for a server you run (--endpoint); a managed server makes its own key")
    if args.revision and args.endpoint:
        raise SystemExit("--revision is for a managed server; the server at --endpoint decides what it loaded")
    try:
        check_server_settings(args.server_arg, env, "--server_arg/--server_env")
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    # Inside the workflow the job runs offline, and a managed server loads a hub model from the run's model store.
    weights = None
    if args.endpoint:
        workflow_store()
    else:
        try:
            loads, _ = model_to_load(args.model, args.revision, "--model")
        except NotFetched as exc:
            raise SystemExit(str(exc)) from None
        weights = loads if loads != args.model else None
    return ServerSettings(model=args.model, endpoint=args.endpoint, api_key=api_key_from_args(args),
                          revision=args.revision, weights=weights, served_model_name=args.served_model_name,
                          args=tuple(args.server_arg), env=env, log=args.server_log,
                          health_timeout_s=args.health_timeout_s)


def api_key_from_args(args) -> str | None:
    """The key of the user's server, from the environment variable --api_key_env names."""
    if not args.api_key_env:
        return None
    if args.api_key_env not in os.environ:
        raise SystemExit(f"--api_key_env names {args.api_key_env!r}, which is not set in the environment")
    return os.environ[args.api_key_env]
