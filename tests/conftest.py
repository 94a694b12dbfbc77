"""Shared fixtures: the embedded models, converted once per machine by the pipeline's own script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Converted models are kept between test runs on the same machine (conversion takes about two minutes).
MODEL_CACHE = Path(os.environ.get("MATHSFT_TEST_MODELS", REPO / ".cache" / "models"))


def converted_model(name: str) -> Path:
    out = MODEL_CACHE / name
    if not (out / "config.json").is_file():
        subprocess.run([sys.executable, str(REPO / "scripts" / "prepare_model.py"), "--name", name, "--output", str(out)],
                       check=True)
    return out


@pytest.fixture(scope="session")
def student_dir() -> Path:
    return converted_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def teacher_dir() -> Path:
    return converted_model("qwen2.5-coder-0.5b-instruct")


@pytest.fixture(scope="session")
def student_tokenizer(student_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(student_dir)
