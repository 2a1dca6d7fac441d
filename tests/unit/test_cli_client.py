"""Where the CLI finds the API and its token, and how it reads the API's errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from nebula_core.cli.client import DEFAULT_URL, ApiError, ConfigError, _error_from, normalise_url, resolve


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """An environment with a config home and a state directory of its own, and nothing else."""
    return {
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "NEBULA_STATE_DIR": str(tmp_path / "state"),
    }


def config_file(env: dict[str, str], text: str) -> Path:
    path = Path(env["XDG_CONFIG_HOME"]) / "nebula" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_options_beat_the_environment_which_beats_the_config_file(home: dict[str, str]) -> None:
    config_file(home, 'url = "http://file:1"\ntoken = "from-file"\n')
    env = {**home, "NEBULA_URL": "http://env:2", "NEBULA_TOKEN": "from-env"}
    chosen = resolve("http://option:3", "from-option", env)
    assert (chosen.url, chosen.token, chosen.token_from) == ("http://option:3", "from-option", "--token")
    chosen = resolve(None, None, env)
    assert (chosen.url, chosen.token, chosen.token_from) == ("http://env:2", "from-env", "NEBULA_TOKEN")
    chosen = resolve(None, None, home)
    assert (chosen.url, chosen.token) == ("http://file:1", "from-file")
    assert chosen.token_from.endswith("nebula/config.toml")


def test_the_url_defaults_to_the_local_api(home: dict[str, str]) -> None:
    assert resolve(None, "t", home).url == DEFAULT_URL


def test_a_broken_config_file_is_an_error_only_when_it_is_needed(home: dict[str, str]) -> None:
    path = config_file(home, "url = [broken")
    assert resolve("http://api:8774", "t", home).url == "http://api:8774"
    with pytest.raises(ConfigError, match=f"cannot read {path}"):
        resolve(None, "t", home)
    config_file(home, "token = 42\n")
    with pytest.raises(ConfigError, match="token must be a string"):
        resolve("http://api:8774", None, home)


def test_the_admin_token_that_nebula_up_wrote_is_the_last_resort(home: dict[str, str]) -> None:
    token_file = Path(home["NEBULA_STATE_DIR"]) / "admin-token"
    token_file.parent.mkdir()
    token_file.write_text("bootstrap-token\n")
    chosen = resolve(None, None, home)
    assert (chosen.token, chosen.token_from) == ("bootstrap-token", str(token_file))


def test_no_token_anywhere_says_where_one_may_be_given(home: dict[str, str]) -> None:
    where = r"^no API token: pass --token, set NEBULA_TOKEN, or put token = .* in .*/nebula/config\.toml$"
    with pytest.raises(ConfigError, match=where):
        resolve(None, "  ", home)


@pytest.mark.parametrize("given", ["http://h:8774", "http://h:8774/", "http://h:8774/v1", " http://h:8774/v1/ "])
def test_every_spelling_of_the_api_url_names_the_same_api(given: str) -> None:
    assert normalise_url(given) == "http://h:8774"


def test_an_api_url_must_be_http() -> None:
    with pytest.raises(ConfigError, match="must start with http:// or https://"):
        normalise_url("h:8774")


def test_api_errors_keep_code_message_and_fields() -> None:
    err = _error_from(422, b'{"code":"invalid","message":"Expected `int` >= 1","fields":["$.vcpus"]}', "")
    assert (err.status, err.code, err.fields) == (422, "invalid", ["$.vcpus"])
    assert str(err) == "Expected `int` >= 1 (HTTP 422 invalid; fields: $.vcpus)"


def test_a_non_json_error_is_read_as_its_first_line() -> None:
    err = _error_from(502, b"<html>Bad Gateway</html>\n<body/>", "Bad Gateway")
    assert isinstance(err, ApiError) and str(err) == "<html>Bad Gateway</html> (HTTP 502 error)"
    assert str(_error_from(504, b"", "Gateway Timeout")) == "Gateway Timeout (HTTP 504 error)"
