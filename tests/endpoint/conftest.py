"""One real vLLM server for every test in this folder, started once (a start takes about a minute here): a server
as a user runs it by hand, which the tests reach as an external endpoint. The small student stands in for the
teacher, served from a folder whose path has a space and a quote, under a name of its own that differs from its
path, with the tiny config's CPU settings, behind a key."""

from __future__ import annotations

import os
import shutil

import pytest
from conftest import keyed_server

SERVED_NAME = "my-teacher"
API_KEY = "mathsft-user-server-key-9c2e71"  # the endpoint demands it, like a hosted API would
API_KEY_ENV = "MATHSFT_TEST_API_KEY"  # where the scripts find it (never in their argv)


@pytest.fixture(scope="package")
def user_model(tmp_path_factory, student_dir):
    """The user's model folder, at a path with a space and a quote."""
    folder = tmp_path_factory.mktemp("models") / "a user's models" / "teacher model"
    shutil.copytree(student_dir, folder, copy_function=os.link)
    return folder


@pytest.fixture(scope="package")
def endpoint(tmp_path_factory, user_model):
    """The user's running server; stopped after the last test of this folder."""
    with keyed_server(user_model, tmp_path_factory.mktemp("user_server") / "server.log", API_KEY,
                      served_model_name=SERVED_NAME) as server:
        yield server
