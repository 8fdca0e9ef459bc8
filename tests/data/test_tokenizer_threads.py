"""TOKENIZERS_PARALLELISM: off for forks by default, lent to in-process batch tokenization, the user's choice kept."""

from __future__ import annotations

import os

import pytest

from lathe.data.templates import tokenize


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv(tokenize.PARALLELISM, raising=False)
    monkeypatch.delenv(tokenize._DEFAULTED, raising=False)


def test_lathe_turns_threads_off_and_lends_them_to_batches(clean_env):
    tokenize.tokenizer_threads_off_by_default()
    assert os.environ[tokenize.PARALLELISM] == "false"
    with tokenize.tokenizer_threads():
        assert os.environ[tokenize.PARALLELISM] == "true"
    assert os.environ[tokenize.PARALLELISM] == "false"  # later forks stay quiet
    with tokenize.tokenizer_threads(enabled=False):  # work done in forked workers
        assert os.environ[tokenize.PARALLELISM] == "false"


@pytest.mark.parametrize("users_choice", ["false", "true"])
def test_the_users_setting_is_never_changed(clean_env, monkeypatch, users_choice):
    monkeypatch.setenv(tokenize.PARALLELISM, users_choice)
    tokenize.tokenizer_threads_off_by_default()
    with tokenize.tokenizer_threads():
        assert os.environ[tokenize.PARALLELISM] == users_choice
    assert os.environ[tokenize.PARALLELISM] == users_choice


def test_threads_are_switched_off_again_after_an_error(clean_env):
    tokenize.tokenizer_threads_off_by_default()
    with pytest.raises(RuntimeError), tokenize.tokenizer_threads():
        raise RuntimeError("boom")
    assert os.environ[tokenize.PARALLELISM] == "false"
