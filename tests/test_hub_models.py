"""The run's model store (mathsft/hub_models.py, scripts/fetch_model.py, the fetch_model rule): the real fetch code
(huggingface_hub's snapshot_download) against hub models laid out as its cache holds them (helpers/hubmodels.py),
with the hub out of reach; the copy a job finds, or the error that names what to do; and the jobs a plan holds."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.hubmodels import DECOYS, write_hub_cache
from helpers.workflow import REPO, edited_config, planned_outputs, snakemake
from mathsft import hub_models

COMMIT = "0123456789abcdef0123456789abcdef01234567"
HUB = "mathsft-test/tiny-model"
MODEL = {
    "config.json": b'{"model_type": "llama", "max_position_embeddings": 2048}',
    "generation_config.json": b'{"temperature": 0.7}',
    "tokenizer.json": b'{"version": "1.0"}',
    "tokenizer_config.json": b'{"chat_template": "{{ messages }}"}',
    "model.safetensors": bytes(range(256)) * 64,
}
SECRET = "hf_not-a-real-token-but-secret"


def fetch(hf_home: Path, output: Path, hub: str = HUB, revision: str | None = COMMIT) -> subprocess.CompletedProcess:
    """scripts/fetch_model.py as the fetch_model rule runs it, with a token in the environment and the hub's offline
    switch on (the hub cannot be reached from here: huggingface_hub then resolves the pinned commit from its cache)."""
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "HF_TOKEN": SECRET}
    env.pop(hub_models.STORE_ENV, None)
    return subprocess.run([sys.executable, str(REPO / "scripts" / "fetch_model.py"), "--hub", hub,
                           *(["--revision", revision] if revision else []), "--output", str(output)],
                          capture_output=True, text=True, env=env, timeout=120)


def test_a_fetch_keeps_only_what_a_run_loads_with_a_manifest_that_sha256sum_checks_and_no_token(tmp_path):
    write_hub_cache(tmp_path / "hf" / "hub", HUB, COMMIT, MODEL | DECOYS)
    output = tmp_path / "store" / "mathsft-test--tiny-model"
    result = fetch(tmp_path / "hf", output)
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in output.iterdir()) == sorted([*MODEL, "SHA256SUMS", "origin.json"])
    for name, data in MODEL.items():
        assert (output / name).read_bytes() == data
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=output, capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.count(": OK") == len(MODEL), check.stdout + check.stderr
    origin = json.loads((output / "origin.json").read_text())
    assert origin == {"hub": HUB, "revision": COMMIT, "commit": COMMIT,
                      "files": {name: len(data) for name, data in sorted(MODEL.items())}}
    written = result.stdout + result.stderr + "".join(path.read_text() for path in output.glob("*.json"))
    assert SECRET not in written + (output / "SHA256SUMS").read_text()
    assert [path.name for path in output.parent.iterdir()] == [output.name]  # no temporary folder left
    # The copy is what a job in the workflow loads, found by hub id and revision.
    assert hub_models.fetched_copy(HUB, COMMIT, "train.model", tmp_path / "store") == output


def test_an_unpinned_model_is_fetched_at_the_main_branch_and_records_the_commit_it_was(tmp_path):
    write_hub_cache(tmp_path / "hf" / "hub", HUB, COMMIT, MODEL)
    output = hub_models.store_folder(tmp_path / "store", HUB)
    result = fetch(tmp_path / "hf", output, revision=None)
    assert result.returncode == 0, result.stderr
    assert json.loads((output / "origin.json").read_text())["commit"] == COMMIT


def test_a_damaged_cached_weight_is_refused_against_the_hubs_sha256_and_nothing_is_written(tmp_path):
    snapshot = write_hub_cache(tmp_path / "hf" / "hub", HUB, COMMIT, MODEL)
    blob = (snapshot / "model.safetensors").resolve()
    blob.write_bytes(b"\0" * len(MODEL["model.safetensors"]))  # same size, other bytes: a torn write on a share
    output = tmp_path / "store" / "m"
    result = fetch(tmp_path / "hf", output)
    assert result.returncode != 0
    damaged = hashlib.sha256(blob.read_bytes()).hexdigest()
    listed = hashlib.sha256(MODEL["model.safetensors"]).hexdigest()
    assert f"model.safetensors has sha256 {damaged}, the hub lists {listed}" in result.stderr
    assert "the cached copy at" in result.stderr and "is damaged" in result.stderr
    assert not output.exists() and list(output.parent.iterdir()) == []


@pytest.mark.parametrize(("files", "missing"), [
    ({k: v for k, v in MODEL.items() if k != "model.safetensors"} | {"pytorch_model.bin": b"pickle"},
     "no safetensors weights (a .bin or .pth is a pickle: mathsft loads safetensors only)"),
    ({k: v for k, v in MODEL.items() if k != "model.safetensors"}
     | {"model.safetensors.index.json": json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors",
                                                                   "b": "model-00002-of-00002.safetensors"}}).encode(),
        "model-00001-of-00002.safetensors": b"first half"},
     "no model-00002-of-00002.safetensors"),
    ({k: v for k, v in MODEL.items() if k not in ("tokenizer.json", "tokenizer_config.json")},
     "no a tokenizer (tokenizer.json, tokenizer.model or vocab.json)"),
])
def test_a_repository_a_run_cannot_load_is_refused_naming_what_it_lacks(tmp_path, files, missing):
    write_hub_cache(tmp_path / "hf" / "hub", HUB, COMMIT, files)
    output = tmp_path / "store" / "m"
    result = fetch(tmp_path / "hf", output)
    assert result.returncode != 0 and not output.exists()
    assert f"error: {HUB} (revision {COMMIT}, commit {COMMIT}): {missing}" in result.stderr


def test_a_model_the_hub_cannot_give_fails_the_fetch_naming_model_and_revision(tmp_path):
    result = fetch(tmp_path / "empty-hf", tmp_path / "store" / "m")
    assert result.returncode != 0
    assert f"error: {HUB} (revision {COMMIT}): fetching it failed: " in result.stderr


def fetched(tmp_path: Path) -> Path:
    write_hub_cache(tmp_path / "hf" / "hub", HUB, COMMIT, MODEL)
    output = hub_models.store_folder(tmp_path / "results" / "hub_models", HUB)
    assert fetch(tmp_path / "hf", output).returncode == 0
    return output


def test_inside_the_workflow_a_job_loads_the_fetched_copy_offline_and_outside_it_nothing_changes(tmp_path, monkeypatch):
    output = fetched(tmp_path)
    for switch in hub_models.OFFLINE_SWITCHES:
        monkeypatch.delenv(switch, raising=False)
    monkeypatch.delenv(hub_models.STORE_ENV, raising=False)
    assert hub_models.model_to_load(HUB, COMMIT, "train.model") == (HUB, COMMIT)  # a script run by hand
    assert not any(switch in os.environ for switch in hub_models.OFFLINE_SWITCHES)

    monkeypatch.setenv(hub_models.STORE_ENV, str(output.parent))
    assert hub_models.model_to_load(HUB, COMMIT, "train.model") == (str(output), None)
    assert {switch: os.environ[switch] for switch in hub_models.OFFLINE_SWITCHES} == hub_models.OFFLINE_SWITCHES
    local = tmp_path / "a local folder"
    local.mkdir()
    assert hub_models.model_to_load(str(local), None, "train.model") == (str(local), None)
    assert hub_models.model_to_load("embedded:smollm2-135m-instruct", None, "x")[0] == "embedded:smollm2-135m-instruct"


def test_a_job_whose_copy_is_missing_or_damaged_fails_at_once_naming_the_setting_and_the_fetch_rule(tmp_path):
    output = fetched(tmp_path)
    store = output.parent
    with pytest.raises(hub_models.NotFetched, match=r"^train\.model: mathsft-test/other \(revision main\) has no "
                                                    r"fetched copy at .*, and jobs download nothing: the workflow's "
                                                    r"fetch_model rule fetches it where snakemake runs .*: run "
                                                    r"`snakemake .*/mathsft-test--other` there"):
        hub_models.fetched_copy("mathsft-test/other", None, "train.model", store)
    with pytest.raises(hub_models.NotFetched, match=rf"^teacher\.model: {HUB} \(revision abc\): {output} holds "
                                                    rf"{HUB} at revision {COMMIT}; the workflow's fetch_model rule"):
        hub_models.fetched_copy(HUB, "abc", "teacher.model", store)
    (output / "model.safetensors").write_bytes(b"cut short")
    with pytest.raises(hub_models.NotFetched, match=r"the fetched copy .* is damaged \(model\.safetensors missing or "
                                                    r"not of the size fetched\): delete it"):
        hub_models.fetched_copy(HUB, COMMIT, "--model", store)
    (output / "origin.json").write_text("{not json")
    with pytest.raises(hub_models.NotFetched, match=r"origin\.json is unreadable"):
        hub_models.fetched_copy(HUB, COMMIT, "--model", store)


@pytest.mark.parametrize(("spec", "hub"), [
    ("Qwen/Qwen2.5-Math-1.5B", True), ("agentica-org/DeepScaleR-1.5B-Preview", True), ("gpt2", True),
    ("embedded:smollm2-135m-instruct", False), ("./models/x", False), ("/models/x", False), ("a/b/c", False),
    ("org/../x", False), ("org--x/y", False), ("results/models/sft", False),
])
def test_a_hub_id_is_told_from_a_path_and_an_embedded_model(spec, hub):
    assert hub_models.is_hub_id(spec) is hub


def test_the_plan_fetches_each_hub_model_once_on_the_submit_host_before_the_data_stage(tmp_path):
    """Teacher and student the same hub model at the same revision: one fetch job, which every job that loads the
    model waits for."""
    config = edited_config(REPO / "tests" / "configs" / "tiny.yaml", tmp_path / "hub.yaml",
                           **{"teacher.model": HUB, "teacher.revision": COMMIT, "train.model": HUB,
                              "train.revision": COMMIT})
    planned = planned_outputs(tmp_path, config)
    assert planned["fetch_model"] == {"results/hub_models/mathsft-test--tiny-model"}
    result = snakemake(tmp_path, config, "-n", "--forceall", "--dag", timeout=300)
    assert result.returncode == 0, result.stderr
    rules = {node: rule for node, rule in re.findall(r'^\s*(\d+)\[label = "([A-Za-z_]+)', result.stdout, re.M)}
    edges = {(rules[a], rules[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", result.stdout, re.M)}
    assert {rule for before, rule in edges if before == "fetch_model"} == {"teacher", "train", "evaluate"}
    assert [rule for rule in rules.values() if rule == "fetch_model"] == ["fetch_model"]


def test_one_hub_model_at_two_revisions_is_refused_before_any_job(tmp_path):
    config = edited_config(REPO / "tests" / "configs" / "tiny.yaml", tmp_path / "hub.yaml",
                           **{"teacher.model": HUB, "teacher.revision": COMMIT, "train.model": HUB})
    result = snakemake(tmp_path, config, "-n", timeout=300)
    assert result.returncode != 0
    assert (f"teacher.revision, train.revision: {HUB} at two revisions ({COMMIT}, main); the model store holds one "
            "revision of a hub model: pin both to the same one") in result.stdout + result.stderr
