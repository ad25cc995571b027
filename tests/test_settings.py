"""Settings: one source of defaults and environment names, read only when asked."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from cvserve.settings import Settings


def test_defaults_read_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVSERVE_WORKERS", "7")
    assert Settings().workers == 0  # only from_env reads CVSERVE_*
    assert Settings.from_env().workers == 7


def test_from_env_names_and_parsing() -> None:
    env = {
        "CVSERVE_DATA_DIR": "/d",
        "CVSERVE_PORT": "8080",
        "CVSERVE_API_KEYS": "k1, k2",
        "CVSERVE_ALLOW_URL_HOSTS": "10.0.0.0/8 example.org",
        "CVSERVE_AUTO_PULL": "false",
        "CVSERVE_REQUEST_TIMEOUT_S": "2.5",
        "CVSERVE_HOST": "",  # empty: the default
        "CVSERVE_TEST_CHROMIUM": "/usr/bin/chromium",  # not a setting: ignored
        "OTHER": "x",
    }
    s = Settings.from_env(env)
    assert s.data_dir == Path("/d") and s.store_dir == Path("/d/models")
    assert s.port == 8080 and s.host == "127.0.0.1"
    assert s.api_keys == ("k1", "k2")
    assert s.allow_url_hosts == ("10.0.0.0/8", "example.org")
    assert s.auto_pull is False and s.request_timeout_s == 2.5
    assert Settings.from_env({"X_PORT": "1"}, prefix="X_").port == 1


def test_env_name_and_default_come_from_the_fields() -> None:
    assert Settings.env_name("max_queue") == "CVSERVE_MAX_QUEUE"
    assert Settings.default("max_queue") == Settings().max_queue
    with pytest.raises(KeyError):
        Settings.env_name("no_such_setting")


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValidationError):
        Settings.from_env({"CVSERVE_PORT": "ninety"})
    with pytest.raises(ValidationError):
        Settings(no_such_setting=1)


def test_immutable_copies_and_derived_values() -> None:
    s = Settings(workers=2, intra_op_threads=3, models_dir=Path("/m"))
    with pytest.raises(ValidationError):
        s.workers = 4  # type: ignore[misc]  # frozen: shared by every thread
    t = s.with_overrides(workers=5, port=None)
    assert (t.workers, t.port, s.workers) == (5, 9001, 2)
    assert t.models_dir == Path("/m") and t.data_dir == s.data_dir
    assert hash(s) == hash(Settings(**s.model_dump()))
    assert (s.lanes(), s.threads_per_lane(), s.wide_threads()) == (2, 3, 0)
    auto = Settings()
    assert auto.lanes() == auto.cores and auto.threads_per_lane() >= 1


def test_zoo_pull_guesses_no_data_folder(tmp_path: Path) -> None:
    from cvserve import zoo
    from cvserve.models.store import ModelStore

    # The folder comes from the caller's Settings (data_dir), never from a default of its own.
    with pytest.raises(TypeError, match="data_dir"):
        zoo.pull("faces", ModelStore(tmp_path / "models"))


def test_runtime_counts_the_cores_settings_count() -> None:
    from cvserve.models.runtime import helper_threads

    assert helper_threads()._max_workers == max(1, Settings().cores - 1)


def test_cli_flags_take_env_names_and_defaults_from_settings() -> None:
    import typer.main

    from cvserve.cli import app

    command = typer.main.get_command(app)
    names = {Settings.env_name(f) for f in Settings.model_fields}
    checked = 0
    for cmd in [command.commands["serve"], *command.commands["models"].commands.values()]:
        for p in cmd.params:
            if p.envvar:
                assert p.envvar in names, (cmd.name, p.name)
                assert p.default is None, (cmd.name, p.name)  # left out: Settings decides
                checked += 1
    assert checked >= 8
