"""Settings: one frozen object, read once at start-up and passed in explicitly.

Every setting is an environment variable (``PYTHON_PROJECTS_DIR`` and the
``PYTHON_*`` timeouts keep the seed's names, the rest are ``KERNEL_MCP_*``), may
come from a ``.env`` file in the working directory, and may be overridden by a
CLI flag. ``.env.example`` documents each one.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from kernel_mcp.errors import ConfigError, InvalidArgument

__all__ = ["DEFAULT_SECRET_PATTERNS", "Settings", "load_settings"]

#: Environment variables whose names match these (fnmatch, case-insensitive)
#: never reach a kernel, unless named in KERNEL_MCP_ENV_ALLOW.
DEFAULT_SECRET_PATTERNS: tuple[str, ...] = (
    "*_API_KEY",
    "*APIKEY*",
    "*_TOKEN",
    "*TOKEN*",
    "*SECRET*",
    "*PASSWORD*",
    "*PASSWD*",
    "*CREDENTIAL*",
    "*_PRIVATE_KEY",
    "*ACCESS_KEY*",
    "KERNEL_MCP_*",
)

CommaList = Annotated[list[str], NoDecode]


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class Settings(BaseSettings):
    """Everything the server can be told. Field docs are the user-facing help."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        populate_by_name=True,
        case_sensitive=False,
    )

    # --- where code comes from, how long it may run -------------------------
    projects_dir: Path = Field(
        Path("python_projects"),
        validation_alias=_env("PYTHON_PROJECTS_DIR", "projects_dir"),
        description="Folder whose .py and .ipynb files may be run.",
    )
    timeout: float = Field(
        30.0,
        validation_alias=_env("PYTHON_TIMEOUT", "timeout"),
        description="Default per-call time limit, seconds.",
    )
    max_timeout: float = Field(
        600.0,
        validation_alias=_env("PYTHON_MAX_TIMEOUT", "max_timeout"),
        description="Largest time limit a caller may ask for, seconds.",
    )
    interrupt_grace: float = Field(
        3.0,
        validation_alias=_env("KERNEL_MCP_INTERRUPT_GRACE", "interrupt_grace"),
        description="After a timeout or cancel, seconds to wait for SIGINT before killing.",
    )
    max_file_bytes: int = Field(
        2 * 1024 * 1024,
        validation_alias=_env("KERNEL_MCP_MAX_FILE_BYTES", "max_file_bytes"),
        description="Largest file that may be run, bytes.",
    )

    # --- HTTP ---------------------------------------------------------------
    host: str = Field("127.0.0.1", validation_alias=_env("KERNEL_MCP_HOST", "host"))
    port: int = Field(8000, validation_alias=_env("KERNEL_MCP_PORT", "port"))
    token: SecretStr | None = Field(
        None,
        validation_alias=_env("KERNEL_MCP_TOKEN", "token"),
        description="Bearer token(s), comma-separated; each token is its own principal.",
    )
    insecure: bool = Field(
        False,
        validation_alias=_env("KERNEL_MCP_INSECURE", "insecure"),
        description="Allow a non-loopback bind without a token.",
    )
    allowed_hosts: CommaList = Field(
        default_factory=list,
        validation_alias=_env("KERNEL_MCP_ALLOWED_HOSTS", "allowed_hosts"),
        description="Extra Host header values accepted (loopback names always are).",
    )
    allowed_origins: CommaList = Field(
        default_factory=list,
        validation_alias=_env("KERNEL_MCP_ALLOWED_ORIGINS", "allowed_origins"),
        description="Browser origins accepted besides same-origin loopback.",
    )

    # --- kernels ------------------------------------------------------------
    kernel_name: str = Field(
        "python3", validation_alias=_env("KERNEL_MCP_KERNEL_NAME", "kernel_name")
    )
    pool_size: int = Field(2, validation_alias=_env("KERNEL_MCP_POOL_SIZE", "pool_size"))
    preload: CommaList = Field(
        default_factory=list,
        validation_alias=_env("KERNEL_MCP_PRELOAD", "preload"),
        description="Modules pooled kernels import in advance, e.g. numpy,pandas.",
    )
    memory_limit_mb: int = Field(
        4096,
        validation_alias=_env("KERNEL_MCP_MEMORY_LIMIT_MB", "memory_limit_mb"),
        description="Address-space limit per kernel (RLIMIT_AS), MiB; 0 turns it off.",
    )
    env_allow: CommaList = Field(
        default_factory=list,
        validation_alias=_env("KERNEL_MCP_ENV_ALLOW", "env_allow"),
        description="Variables passed to kernels even though their names look secret.",
    )

    max_fresh_runs: int = Field(
        8,
        validation_alias=_env("KERNEL_MCP_MAX_FRESH_RUNS", "max_fresh_runs"),
        description="Session-less runs at once; more wait their turn (each is a kernel).",
    )

    # --- remote kernels and shared state (scale-out) -----------------------
    gateway_url: str | None = Field(
        None,
        validation_alias=_env("KERNEL_MCP_GATEWAY_URL", "gateway_url"),
        description="Jupyter Kernel/Enterprise Gateway base URL; unset = local kernels.",
    )
    gateway_token: SecretStr | None = Field(
        None,
        validation_alias=_env("KERNEL_MCP_GATEWAY_TOKEN", "gateway_token"),
        description="Token the gateway expects (sent as 'Authorization: token ...').",
    )
    gateway_kernel_name: str = Field(
        "python3",
        validation_alias=_env("KERNEL_MCP_GATEWAY_KERNEL_NAME", "gateway_kernel_name"),
        description="Kernel spec name the gateway starts.",
    )
    state_url: str | None = Field(
        None,
        validation_alias=_env("KERNEL_MCP_STATE_URL", "state_url"),
        description="Redis URL for sessions shared by server replicas; unset = in process.",
    )
    lease_ttl: float = Field(
        15.0,
        validation_alias=_env("KERNEL_MCP_LEASE_TTL", "lease_ttl"),
        description="Seconds a dead replica's hold on a session outlives it (shared state).",
    )

    # --- sessions -----------------------------------------------------------
    max_sessions: int = Field(32, validation_alias=_env("KERNEL_MCP_MAX_SESSIONS", "max_sessions"))
    session_idle_timeout: float = Field(
        3600.0,
        validation_alias=_env("KERNEL_MCP_SESSION_IDLE_TIMEOUT", "session_idle_timeout"),
        description="Seconds a session may sit unused before its kernel is culled; 0 = never.",
    )

    # --- reply caps (the notebook keeps more) ------------------------------
    max_stream_chars: int = Field(
        64 * 1024,
        validation_alias=_env("KERNEL_MCP_MAX_STREAM_CHARS", "max_stream_chars"),
        description="stdout and stderr each keep at most this many characters in a reply.",
    )
    max_images: int = Field(8, validation_alias=_env("KERNEL_MCP_MAX_IMAGES", "max_images"))
    max_image_bytes: int = Field(
        512 * 1024,
        validation_alias=_env("KERNEL_MCP_MAX_IMAGE_BYTES", "max_image_bytes"),
        description="Largest image inlined in a reply (decoded bytes).",
    )
    max_reply_bytes: int = Field(
        900 * 1024,
        validation_alias=_env("KERNEL_MCP_MAX_REPLY_BYTES", "max_reply_bytes"),
        description="Whole reply budget; stays under the 1 MiB SSE event limit of MCP clients.",
    )
    max_output_bytes: int = Field(
        10 * 1024 * 1024,
        validation_alias=_env("KERNEL_MCP_MAX_OUTPUT_BYTES", "max_output_bytes"),
        description="Per-output cap kept in memory and in recorded notebooks.",
    )

    # --- notebooks ----------------------------------------------------------
    notebooks_dir: Path = Field(
        Path("notebooks"),
        validation_alias=_env("KERNEL_MCP_NOTEBOOKS_DIR", "notebooks_dir"),
    )
    notebook_timeout: float = Field(
        1800.0,
        validation_alias=_env("KERNEL_MCP_NOTEBOOK_TIMEOUT", "notebook_timeout"),
        description="Total time cap for one run_notebook call, seconds.",
    )

    @field_validator("allowed_hosts", "allowed_origins", "preload", "env_allow", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("timeout", "max_timeout", "interrupt_grace", "notebook_timeout", "lease_ttl")
    @classmethod
    def _positive_seconds(cls, value: float) -> float:
        if not math.isfinite(value) or value <= 0:
            raise ValueError("must be a positive number of seconds")
        return value

    @field_validator("session_idle_timeout")
    @classmethod
    def _non_negative_seconds(cls, value: float) -> float:
        if not math.isfinite(value) or value < 0:
            raise ValueError("must be zero (never) or a positive number of seconds")
        return value

    @field_validator(
        "max_file_bytes",
        "max_stream_chars",
        "max_image_bytes",
        "max_reply_bytes",
        "max_output_bytes",
        "max_sessions",
        "max_fresh_runs",
    )
    @classmethod
    def _positive_int(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("must be a positive integer")
        return value

    @field_validator("pool_size", "max_images", "memory_limit_mb")
    @classmethod
    def _non_negative_int(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must be zero or a positive integer")
        return value

    @field_validator("port")
    @classmethod
    def _port(cls, value: int) -> int:
        if not 0 <= value <= 65535:
            raise ValueError("must be a TCP port, 0-65535")
        return value

    @field_validator("projects_dir")
    @classmethod
    def _projects_dir_exists(cls, value: Path) -> Path:
        resolved = value.expanduser().resolve()
        if not resolved.is_dir():
            raise ValueError(f"folder {value} does not exist")
        return resolved

    @field_validator("gateway_url")
    @classmethod
    def _gateway_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("state_url")
    @classmethod
    def _state_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value.strip()

    @field_validator("notebooks_dir")
    @classmethod
    def _absolute_notebooks_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def tokens(self) -> list[str]:
        """The accepted bearer tokens (empty: no auth)."""
        if self.token is None:
            return []
        return [t.strip() for t in self.token.get_secret_value().split(",") if t.strip()]

    def clamp_timeout(self, requested: float | None) -> float:
        """The time limit for one call: the default, or the caller's, capped at max_timeout."""
        if requested is None:
            return min(self.timeout, self.max_timeout)
        if not math.isfinite(requested) or requested <= 0:
            raise InvalidArgument("timeout must be a positive number of seconds")
        return min(requested, self.max_timeout)


# Which environment variable feeds each field, for one-line error messages.
def _setting_name(field: str) -> str:
    info = Settings.model_fields.get(field)
    alias = info.validation_alias if info else None
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return field


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment, ``.env`` and ``overrides`` (CLI flags).

    Raises:
        ConfigError: one line naming the offending setting.
    """
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        settings = Settings(**clean)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "settings"
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{_setting_name(field)}: {message}") from None
    if settings.max_timeout < settings.timeout:
        raise ConfigError("PYTHON_MAX_TIMEOUT: must not be smaller than PYTHON_TIMEOUT")
    if settings.state_url and not settings.gateway_url:
        raise ConfigError(
            "KERNEL_MCP_STATE_URL: needs KERNEL_MCP_GATEWAY_URL too "
            "(replicas share sessions only on gateway kernels; local ones are unreachable)"
        )
    if settings.state_url and importlib.util.find_spec("redis") is None:
        raise ConfigError(
            "KERNEL_MCP_STATE_URL: needs the redis package: pip install 'kernel-mcp[scale]'"
        )
    return settings
