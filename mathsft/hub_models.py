"""Hub models fetched once into the run's model store (results/hub_models/, by the local fetch_model rule, on the
host Snakemake runs on), and found there by the jobs that load them, which run offline: compute nodes download
nothing, share no Hugging Face cache, and a missing file fails at once, naming the rule that fetches it.

A fetched model is its hub id at its revision: records, fingerprints and eval.json name those, never the folder."""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mathsft.io import file_sha256

log = logging.getLogger(__name__)

# Set by the workflow (rules/common.smk) for its jobs: the store's folder. Unset, as in a script run by hand,
# a hub id is loaded from the hub as transformers and vLLM load it.
STORE_ENV = "MATHSFT_MODEL_STORE"
# The hub's own switches: with them, huggingface_hub, transformers and datasets read nothing from the network.
OFFLINE_SWITCHES = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
MANIFEST = "SHA256SUMS"  # `sha256sum -c SHA256SUMS` checks a copy by hand
ORIGIN = "origin.json"
# What a run loads, at the repository's top level: config, generation config, tokenizer, safetensors weights.
# Never the .bin/.pth/GGUF copies of the same weights, nor subfolders (original/, onnx/, ...).
WANTED = ("*.json", "*.safetensors", "*.jinja", "merges.txt", "vocab.txt", "tokenizer.model", "*.tiktoken")
NOT_WANTED = (".*", "*/*")
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?")
SHA256 = re.compile(r"[0-9a-f]{64}")
DEFAULT_REVISION = "main"


def is_hub_id(spec: str) -> bool:
    """Whether a model spec (teacher.model, train.model) names a hub model: org/name (or a bare name) that is no
    local path and no embedded model."""
    return (bool(HUB_ID.fullmatch(spec)) and ".." not in spec and "--" not in spec
            and not spec.startswith((".", "embedded:")) and not os.path.exists(spec))


def store_folder(store: str | os.PathLike, hub: str) -> Path:
    """Where the store keeps `hub`, at the one revision the config names (origin.json says which): a folder per
    hub id, so that moving a revision refetches into the same folder and the data stage, which waits for it, keeps
    the same inputs (rules/models.smk says why that matters)."""
    return Path(store) / hub.replace("/", "--")


def wanted(path: str) -> bool:
    """Whether a repository file is one a run loads (WANTED, NOT_WANTED)."""
    return (any(fnmatch.fnmatchcase(path, pattern) for pattern in WANTED)
            and not any(fnmatch.fnmatchcase(path, pattern) for pattern in NOT_WANTED))


@dataclass(frozen=True)
class Origin:
    """What a fetched copy is: the hub id, the revision asked for, the commit it resolved to, each file's size."""

    hub: str
    revision: str | None
    commit: str
    sizes: dict[str, int]

    def to_json(self) -> dict:
        return {"hub": self.hub, "revision": self.revision, "commit": self.commit, "files": self.sizes}


def missing_files(files: set[str], index: dict | None) -> list[str]:
    """What a model folder holding `files` lacks to be loaded: its config, a tokenizer, safetensors weights
    (every shard its index names)."""
    missing = [] if "config.json" in files else ["config.json"]
    if not files & {"tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt"}:
        missing.append("a tokenizer (tokenizer.json, tokenizer.model or vocab.json)")
    if index is not None:
        shards = sorted(set(index.get("weight_map", {}).values()))
        missing += [shard for shard in shards if shard not in files] or ([] if shards else
                                                                         ["the shards model.safetensors.index.json names"])
    elif not any(name.endswith(".safetensors") for name in files):
        missing.append("safetensors weights (a .bin or .pth is a pickle: mathsft loads safetensors only)")
    return missing


def fetch(hub: str, revision: str | None, output: str | os.PathLike) -> Origin:
    """Fetch `hub` at `revision` (the main branch if None) into the folder `output`: the WANTED files, through the
    Hugging Face cache (huggingface_hub.snapshot_download; a token, for gated models, only from the environment:
    HF_TOKEN), checked complete and against the sha256 the hub lists for its weights, with a sha256 manifest and
    origin.json. The folder appears whole or not at all."""
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(snapshot_download(hub, revision=revision or DEFAULT_REVISION, allow_patterns=list(WANTED),
                                          ignore_patterns=list(NOT_WANTED)))
    except Exception as exc:
        raise RuntimeError(f"{hub} (revision {revision or DEFAULT_REVISION}): fetching it failed: "
                           f"{type(exc).__name__}: {exc}") from exc
    commit = snapshot.name
    files = sorted(str(path.relative_to(snapshot)) for path in snapshot.rglob("*")
                   if (path.is_file() or path.is_symlink()) and wanted(str(path.relative_to(snapshot))))
    index_path = snapshot / "model.safetensors.index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else None
    missing = missing_files(set(files), index)
    if missing:
        raise RuntimeError(f"{hub} (revision {revision or DEFAULT_REVISION}, commit {commit}): no {', '.join(missing)} "
                           f"in {snapshot}; a run cannot load it")
    declared = hub_sha256(hub, commit)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp's folder is its owner's alone; the store is the run's
        sums, sizes = {}, {}
        for name in files:
            source = (snapshot / name).resolve()
            link_or_copy(source, tmp / name)
            sums[name] = file_sha256(tmp / name)
            sizes[name] = (tmp / name).stat().st_size
            # The hub's sha256 of an LFS file: its tree listing's, else its cache blob's name (an LFS etag).
            expected = declared.get(name) or (source.name if SHA256.fullmatch(source.name) else None)
            if expected and expected != sums[name]:
                raise RuntimeError(f"{hub} (commit {commit}): {name} has sha256 {sums[name]}, the hub lists "
                                   f"{expected}: the cached copy at {source} is damaged; delete it and fetch again")
        (tmp / MANIFEST).write_text("".join(f"{sums[name]}  {name}\n" for name in files))
        origin = Origin(hub, revision, commit, sizes)
        (tmp / ORIGIN).write_text(json.dumps(origin.to_json(), indent=2) + "\n")
        if output.exists():
            shutil.rmtree(output)
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("fetched %s at %s (commit %s): %d files, %.1f MB", hub, revision or DEFAULT_REVISION, commit,
             len(files), sum(sizes.values()) / 1e6)
    return origin


def hub_sha256(hub: str, commit: str) -> dict[str, str]:
    """The sha256 the hub lists for each LFS file at `commit`, from the tree listing snapshot_download cached;
    {} where none was cached (the blob names still tell)."""
    from huggingface_hub import get_cached_repo_tree

    try:
        listing = get_cached_repo_tree(hub, revision=commit)
    except Exception:  # no listing cached (CachedRepoTreeNotFoundError, or an older cache layout)
        return {}
    return {entry.path: entry.lfs.sha256 for entry in listing if getattr(entry, "lfs", None) is not None}


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link to the cache's blob where both are on one file system (no second copy of the weights), else a
    copy. The cache replaces a blob by renaming a new file over it, so the link keeps the bytes fetched."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


class NotFetched(Exception):
    """A job's hub model has no whole copy in the store: the message names the setting and what to do."""


def fetched_copy(hub: str, revision: str | None, setting: str, store: str | os.PathLike) -> Path:
    """The store's copy of `hub` at `revision`, checked whole (its origin, and each file at its fetched size), for
    a job that loads it; else NotFetched, naming `setting` and the rule that fetches it."""
    folder = store_folder(store, hub)
    what = f"{setting}: {hub} (revision {revision or DEFAULT_REVISION})"
    # Snakemake does not remake a deleted output that nothing out of date needs: the folder must be its target.
    fetch_it = (f"the workflow's fetch_model rule fetches it where snakemake runs (compute nodes download nothing): "
                f"run `snakemake {os.path.relpath(folder)}` there from the run's folder, then this job again")
    origin_path = folder / ORIGIN
    if not origin_path.is_file():
        raise NotFetched(f"{what} has no fetched copy at {folder}, and jobs download nothing: {fetch_it}")
    try:
        origin = json.loads(origin_path.read_text())
        sizes = {str(name): int(size) for name, size in origin["files"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise NotFetched(f"{what}: {origin_path} is unreadable ({exc}): delete {folder}; {fetch_it}") from exc
    if origin.get("hub") != hub or origin.get("revision") != revision:
        raise NotFetched(f"{what}: {folder} holds {origin.get('hub')} at revision "
                         f"{origin.get('revision') or DEFAULT_REVISION}; {fetch_it}")
    damaged = [name for name, size in sizes.items()
               if not (folder / name).is_file() or (folder / name).stat().st_size != size]
    if damaged:
        raise NotFetched(f"{what}: the fetched copy {folder} is damaged ({', '.join(damaged)} missing or not of "
                         f"the size fetched): delete it; {fetch_it}")
    return folder


def model_to_load(spec: str, revision: str | None, setting: str) -> tuple[str, str | None]:
    """What a job loads for the model spec `spec` (given as `setting`, for messages) and the revision to pass with
    it: inside the workflow, a hub id's fetched copy (the folder is that revision: None); else `spec` and
    `revision`. NotFetched where the copy is missing or damaged."""
    store = workflow_store()
    if not store or not is_hub_id(spec):
        return spec, revision
    return str(fetched_copy(spec, revision, setting, store)), None


def workflow_store() -> str | None:
    """Inside the workflow (STORE_ENV set): its model store, once the hub's offline switches are on for this
    process and every process it starts (a vLLM server). Outside: None, and nothing changes."""
    store = os.environ.get(STORE_ENV)
    if store:
        os.environ.update(OFFLINE_SWITCHES)
    return store or None
