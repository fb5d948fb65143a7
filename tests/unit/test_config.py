"""Settings: environment variables (and .env, and CLI overrides) in, one frozen object out.

Every bad value stops start-up with ConfigError: one line that starts with the
name of the environment variable to fix.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from kernel_mcp.config import Settings, load_settings, setting_name
from kernel_mcp.errors import ConfigError, InvalidArgument

OUR_PREFIXES = ("PYTHON_", "KERNEL_MCP_")


@pytest.fixture
def projects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean environment: a temp working directory (no stray .env), none of our
    variables set, and PYTHON_PROJECTS_DIR pointing at a real temp folder."""
    for name in list(os.environ):
        if name.upper().startswith(OUR_PREFIXES):
            monkeypatch.delenv(name)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    folder = tmp_path / "projects"
    folder.mkdir()
    monkeypatch.setenv("PYTHON_PROJECTS_DIR", str(folder))
    return folder


def config_error(**overrides: object) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(**overrides)
    message = str(caught.value)
    assert "\n" not in message, "a ConfigError is one line"
    return message


# --- defaults -----------------------------------------------------------------------


def test_defaults(projects: Path) -> None:
    settings = load_settings()
    assert settings.projects_dir == projects.resolve()
    assert settings.timeout == 30.0
    assert settings.max_timeout == 600.0
    assert settings.pool_size == 2
    assert settings.allowed_hosts == []
    assert settings.preload == []
    assert settings.token is None
    assert settings.tokens == []
    assert settings.notebooks_dir.is_absolute()


def test_settings_are_frozen(projects: Path) -> None:
    settings = load_settings()
    with pytest.raises(ValueError):
        settings.timeout = 1.0  # type: ignore[misc]


def test_projects_dir_is_resolved_to_an_absolute_real_path(
    projects: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alias = projects.parent / "alias"
    alias.symlink_to(projects, target_is_directory=True)
    monkeypatch.setenv("PYTHON_PROJECTS_DIR", str(alias))
    assert load_settings().projects_dir == projects.resolve()
    monkeypatch.setenv("PYTHON_PROJECTS_DIR", "../projects")  # relative to the cwd
    assert load_settings().projects_dir == projects.resolve()


def test_environment_is_read(projects: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHON_TIMEOUT", "12.5")
    monkeypatch.setenv("PYTHON_MAX_TIMEOUT", "60")
    monkeypatch.setenv("KERNEL_MCP_POOL_SIZE", "0")
    monkeypatch.setenv("KERNEL_MCP_PORT", "9001")
    monkeypatch.setenv("KERNEL_MCP_INSECURE", "true")
    settings = load_settings()
    assert (settings.timeout, settings.max_timeout) == (12.5, 60.0)
    assert settings.pool_size == 0
    assert settings.port == 9001
    assert settings.insecure is True


def test_dotenv_in_the_working_directory_is_read(projects: Path) -> None:
    Path(".env").write_text("PYTHON_TIMEOUT=7\nKERNEL_MCP_MAX_IMAGES=3\n")
    settings = load_settings()
    assert settings.timeout == 7.0
    assert settings.max_images == 3


def test_environment_wins_over_dotenv(projects: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Path(".env").write_text("PYTHON_TIMEOUT=7\n")
    monkeypatch.setenv("PYTHON_TIMEOUT", "9")
    assert load_settings().timeout == 9.0


def test_overrides_win_and_none_means_not_given(
    projects: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHON_TIMEOUT", "9")
    assert load_settings(timeout=5).timeout == 5.0
    assert load_settings(timeout=None).timeout == 9.0
    assert load_settings(port=0).port == 0


# --- one-line errors naming the variable ------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("PYTHON_TIMEOUT", "-1", "PYTHON_TIMEOUT: must be a positive number of seconds"),
        ("PYTHON_TIMEOUT", "0", "PYTHON_TIMEOUT: must be a positive number of seconds"),
        ("PYTHON_TIMEOUT", "nan", "PYTHON_TIMEOUT: must be a positive number of seconds"),
        ("PYTHON_TIMEOUT", "inf", "PYTHON_TIMEOUT: must be a positive number of seconds"),
        ("PYTHON_TIMEOUT", "soon", "PYTHON_TIMEOUT: "),
        ("PYTHON_MAX_TIMEOUT", "-5", "PYTHON_MAX_TIMEOUT: must be a positive number"),
        ("KERNEL_MCP_POOL_SIZE", "-1", "KERNEL_MCP_POOL_SIZE: must be zero or a positive integer"),
        ("KERNEL_MCP_MAX_IMAGES", "-1", "KERNEL_MCP_MAX_IMAGES: must be zero or a positive"),
        ("KERNEL_MCP_MAX_SESSIONS", "0", "KERNEL_MCP_MAX_SESSIONS: must be a positive integer"),
        ("KERNEL_MCP_MAX_REPLY_BYTES", "0", "KERNEL_MCP_MAX_REPLY_BYTES: must be a positive"),
        ("KERNEL_MCP_MAX_FILE_BYTES", "-3", "KERNEL_MCP_MAX_FILE_BYTES: must be a positive"),
        ("KERNEL_MCP_PORT", "70000", "KERNEL_MCP_PORT: must be a TCP port, 0-65535"),
        ("KERNEL_MCP_PORT", "http", "KERNEL_MCP_PORT: "),
        ("KERNEL_MCP_SESSION_IDLE_TIMEOUT", "-1", "KERNEL_MCP_SESSION_IDLE_TIMEOUT: must be zero"),
        ("KERNEL_MCP_INTERRUPT_GRACE", "0", "KERNEL_MCP_INTERRUPT_GRACE: must be a positive"),
        ("KERNEL_MCP_NOTEBOOK_TIMEOUT", "-1", "KERNEL_MCP_NOTEBOOK_TIMEOUT: must be a positive"),
    ],
)
def test_bad_value_names_its_variable(
    projects: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    assert config_error().startswith(expected)


def test_missing_projects_dir_names_its_variable(
    projects: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = projects.parent / "nope"
    monkeypatch.setenv("PYTHON_PROJECTS_DIR", str(missing))
    assert config_error() == f"PYTHON_PROJECTS_DIR: folder {missing} does not exist"


def test_projects_dir_that_is_a_file_is_refused(
    projects: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a_file = projects / "x.py"
    a_file.write_text("")
    monkeypatch.setenv("PYTHON_PROJECTS_DIR", str(a_file))
    assert config_error().startswith("PYTHON_PROJECTS_DIR: ")


def test_bad_override_names_the_variable_too(projects: Path) -> None:
    assert config_error(timeout=-1).startswith("PYTHON_TIMEOUT: ")
    assert config_error(pool_size=-1).startswith("KERNEL_MCP_POOL_SIZE: ")
    assert config_error(projects_dir="/does/not/exist").startswith("PYTHON_PROJECTS_DIR: ")


def test_lower_case_variable_is_read_and_named_in_upper_case(
    projects: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("python_timeout", "-1")
    assert config_error().startswith("PYTHON_TIMEOUT: ")


def test_max_timeout_smaller_than_timeout(projects: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHON_TIMEOUT", "60")
    monkeypatch.setenv("PYTHON_MAX_TIMEOUT", "10")
    assert config_error() == "PYTHON_MAX_TIMEOUT: must not be smaller than PYTHON_TIMEOUT"


def test_timeout_above_the_default_max_needs_a_larger_max(
    projects: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHON_TIMEOUT", "601")
    assert config_error().startswith("PYTHON_MAX_TIMEOUT: ")
    monkeypatch.setenv("PYTHON_MAX_TIMEOUT", "601")
    assert load_settings().timeout == 601.0


# --- rules between fields: on the model, whoever builds it ---------------------------------
BROKEN_RULES = [
    (
        {"timeout": 60, "max_timeout": 10},
        "PYTHON_MAX_TIMEOUT: must not be smaller than PYTHON_TIMEOUT",
    ),
    ({"token": "alice:one,alice:two"}, "KERNEL_MCP_TOKEN: two tokens name the principal 'alice'"),
    (
        {"state_url": "redis://127.0.0.1:6379/0"},
        "KERNEL_MCP_STATE_URL: needs KERNEL_MCP_GATEWAY_URL too",
    ),
    (
        {"host": "0.0.0.0"},
        "KERNEL_MCP_HOST: 0.0.0.0 is not loopback; set KERNEL_MCP_TOKEN or pass --insecure",
    ),
]


@pytest.mark.parametrize(("fields", "said"), BROKEN_RULES)
def test_a_rule_between_fields_holds_for_settings_built_in_python(
    projects: Path, fields: dict[str, object], said: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(**fields)
    assert said in str(caught.value)


@pytest.mark.parametrize(("fields", "said"), BROKEN_RULES)
def test_a_rule_between_fields_is_one_line_naming_the_variable(
    projects: Path, fields: dict[str, object], said: str
) -> None:
    assert config_error(**fields).startswith(said)


def test_an_exposed_bind_is_allowed_with_a_token_or_insecure(projects: Path) -> None:
    assert Settings(host="0.0.0.0", token="secret").host == "0.0.0.0"
    assert Settings(host="0.0.0.0", insecure=True).insecure
    assert Settings(host="::1").host == "::1"


def test_errors_do_not_carry_a_traceback_chain(
    projects: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHON_TIMEOUT", "-1")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


# --- lists and tokens -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("a, b", ["a", "b"]),
        ("a,b", ["a", "b"]),
        (" a ,, b , ", ["a", "b"]),
        ("single", ["single"]),
        ("", []),
        (" , ", []),
    ],
)
def test_comma_lists(
    projects: Path, monkeypatch: pytest.MonkeyPatch, value: str, parsed: list[str]
) -> None:
    monkeypatch.setenv("KERNEL_MCP_ALLOWED_HOSTS", value)
    monkeypatch.setenv("KERNEL_MCP_ALLOWED_ORIGINS", value)
    monkeypatch.setenv("KERNEL_MCP_PRELOAD", value)
    monkeypatch.setenv("KERNEL_MCP_ENV_ALLOW", value)
    settings = load_settings()
    assert settings.allowed_hosts == parsed
    assert settings.allowed_origins == parsed
    assert settings.preload == parsed
    assert settings.env_allow == parsed


def test_comma_list_override_may_be_a_list_or_a_string(projects: Path) -> None:
    assert load_settings(preload=["numpy", "pandas"]).preload == ["numpy", "pandas"]
    assert load_settings(preload="numpy, pandas").preload == ["numpy", "pandas"]


@pytest.mark.parametrize(
    ("value", "tokens"),
    [
        ("t1", ["t1"]),
        ("t1, t2", ["t1", "t2"]),
        ("t1,,t2,", ["t1", "t2"]),
        (" , ", []),
    ],
)
def test_tokens_split(
    projects: Path, monkeypatch: pytest.MonkeyPatch, value: str, tokens: list[str]
) -> None:
    monkeypatch.setenv("KERNEL_MCP_TOKEN", value)
    assert load_settings().tokens == tokens


def test_token_does_not_show_in_repr(projects: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNEL_MCP_TOKEN", "very-secret-token-1,very-secret-token-2")
    settings = load_settings()
    assert "very-secret-token" not in repr(settings)
    assert "very-secret-token" not in str(settings.model_dump())
    assert settings.tokens == ["very-secret-token-1", "very-secret-token-2"]


# --- clamp_timeout -----------------------------------------------------------------------


@pytest.fixture
def settings(projects: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("PYTHON_TIMEOUT", "30")
    monkeypatch.setenv("PYTHON_MAX_TIMEOUT", "100")
    return load_settings()


@pytest.mark.parametrize(
    ("requested", "granted"),
    [
        (None, 30.0),
        (5, 5.0),
        (0.25, 0.25),
        (30, 30.0),
        (99.5, 99.5),
        (100, 100.0),
        (101, 100.0),
        (1e9, 100.0),
    ],
)
def test_clamp_timeout(settings: Settings, requested: float | None, granted: float) -> None:
    assert settings.clamp_timeout(requested) == granted


@pytest.mark.parametrize("requested", [0, -0.0, -1, -1e9, math.nan, math.inf, -math.inf])
def test_clamp_timeout_refuses_non_positive_and_non_finite(
    settings: Settings, requested: float
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        settings.clamp_timeout(requested)
    assert "timeout" in str(caught.value)


# --- only our own names are read ---------------------------------------------------------

STRAY = {"PORT": "9999", "HOST": "0.0.0.0", "TOKEN": "abc", "INSECURE": "1", "TIMEOUT": "5"}


def test_stray_bare_names_in_the_environment_change_nothing(
    projects: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    baseline = load_settings()
    for name, value in STRAY.items():
        monkeypatch.setenv(name, value)
    # Every field's bare name too, in both cases: none of them is one of our settings.
    for field in Settings.model_fields:
        monkeypatch.setenv(field.upper(), "stray-value")
        monkeypatch.setenv(field, "stray-value")
    settings = load_settings()
    assert settings == baseline
    assert (settings.host, settings.port, settings.tokens) == ("127.0.0.1", 8000, [])
    assert settings.insecure is False and settings.timeout == 30.0


def test_stray_bare_names_in_dotenv_change_nothing(projects: Path) -> None:
    baseline = load_settings()
    Path(".env").write_text("".join(f"{name}={value}\n" for name, value in STRAY.items()))
    assert load_settings() == baseline


def test_every_setting_is_read_under_its_documented_name(projects: Path) -> None:
    names = {field: setting_name(field) for field in Settings.model_fields}
    seeds = {"projects_dir", "timeout", "max_timeout"}
    for field, name in names.items():
        expected = f"PYTHON_{field.upper()}" if field in seeds else f"KERNEL_MCP_{field.upper()}"
        if field == "projects_dir":
            expected = "PYTHON_PROJECTS_DIR"
        assert name == expected
    documented = Path(__file__).resolve().parents[2].joinpath(".env.example").read_text()
    missing = [name for name in names.values() if name not in documented]
    assert not missing, f"not in .env.example: {missing}"


def test_prefixed_names_are_read(projects: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNEL_MCP_HOST", "0.0.0.0")
    monkeypatch.setenv("KERNEL_MCP_TOKEN", "abc")
    monkeypatch.setenv("KERNEL_MCP_ALLOW_HARDLINKS", "true")
    settings = load_settings()
    assert (settings.host, settings.tokens, settings.allow_hardlinks) == ("0.0.0.0", ["abc"], True)


# -- attaching to running kernels (KERNEL_MCP_ALLOW_ATTACH) ---------------------------------
def test_attaching_is_on_by_default_with_a_gateway_and_needs_one(
    projects: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_settings(gateway_url="http://127.0.0.1:8888").attach_refusal(None) is None
    local = load_settings()
    assert local.allow_attach == ["true"]  # the default asks for nothing: no error
    assert "attaching needs a gateway" in str(local.attach_refusal(None))
    monkeypatch.setenv("KERNEL_MCP_ALLOW_ATTACH", "true")
    with pytest.raises(
        ConfigError, match=r"^KERNEL_MCP_ALLOW_ATTACH: needs KERNEL_MCP_GATEWAY_URL"
    ):
        load_settings()


@pytest.mark.parametrize("word", ["false", "FALSE", "0", "no", "off"])
def test_allow_attach_false_turns_it_off(projects: Path, word: str) -> None:
    settings = load_settings(gateway_url="http://127.0.0.1:8888", allow_attach=word)
    assert settings.allow_attach == []
    assert "KERNEL_MCP_ALLOW_ATTACH=false" in str(settings.attach_refusal(None))


def test_with_several_principals_only_the_named_ones_may_attach(projects: Path) -> None:
    gateway = {"gateway_url": "http://127.0.0.1:8888", "token": "ana:t1,ben:t2"}
    nobody = load_settings(**gateway)
    assert "only those KERNEL_MCP_ALLOW_ATTACH names" in str(nobody.attach_refusal("ana"))
    named = load_settings(**gateway, allow_attach="ana")
    assert named.attach_refusal("ana") is None
    assert "may not attach" in str(named.attach_refusal("ben"))
    with pytest.raises(ConfigError, match="'eve' is not a principal of KERNEL_MCP_TOKEN"):
        load_settings(**gateway, allow_attach="ana,eve")
    assert load_settings(gateway_url="http://x", token="one-token").attach_refusal("x") is None


def test_attaching_is_not_offered_with_shared_sessions(projects: Path) -> None:
    shared = {"gateway_url": "http://127.0.0.1:8888", "state_url": "redis://127.0.0.1:1"}
    try:
        settings = load_settings(**shared)
    except ConfigError as exc:  # no redis package in this environment
        pytest.skip(str(exc))
    assert "shared sessions" in str(settings.attach_refusal(None))
    with pytest.raises(ConfigError, match="not with KERNEL_MCP_STATE_URL"):
        load_settings(**shared, allow_attach="true")
