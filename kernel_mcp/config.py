"""Settings: one frozen object, read once at start-up and passed in explicitly.

Only two families of environment variables are read: ``KERNEL_MCP_*`` (the
field name, upper-cased, after the prefix) and the seed's three
``PYTHON_PROJECTS_DIR``, ``PYTHON_TIMEOUT`` and ``PYTHON_MAX_TIMEOUT``. A bare
``HOST``, ``PORT``, ``TOKEN`` or ``INSECURE`` in a user's shell or ``.env`` is
never a setting. Values may also come from a ``.env`` file in the working
directory (same names) and from CLI flags, which win. ``.env.example``
documents each one.

Constraints live on the model, so a ``Settings(...)`` built in Python is held
to every one of them, as the environment is: a field's own (``gt=0``,
``le=65535``, ``allow_inf_nan``; the text that follows them in
``Annotated[...]`` is what a bad value's one-line error says), and the rules
between fields (:meth:`Settings._agree`: the time limits, the tokens' names,
what shared state needs, an exposed bind). :func:`load_settings` turns the first
broken one into a one-line ``ConfigError`` that names the variable.
"""

from __future__ import annotations

import importlib.util
import math
import os
import urllib.parse
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from kernel_mcp.errors import ConfigError, InvalidArgument
from kernel_mcp.folders import default_notebooks_dir, default_projects_dir
from kernel_mcp.principals import principal_of

__all__ = [
    "DEFAULT_SECRET_PATTERNS",
    "ENV_PREFIX",
    "LOOPBACK",
    "Settings",
    "load_settings",
    "setting_name",
]

ENV_PREFIX = "KERNEL_MCP_"
#: Bind addresses that need no token: only this machine can connect to them.
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})

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


class Rule(str):
    """The requirement a field states in its one-line error (``Annotated`` metadata)."""


Seconds = Annotated[
    float, Field(gt=0, allow_inf_nan=False), Rule("must be a positive number of seconds")
]
SecondsOrNever = Annotated[
    float,
    Field(ge=0, allow_inf_nan=False),
    Rule("must be zero (never) or a positive number of seconds"),
]
Positive = Annotated[int, Field(gt=0), Rule("must be a positive integer")]
NonNegative = Annotated[int, Field(ge=0), Rule("must be zero or a positive integer")]
Port = Annotated[int, Field(ge=0, le=65535), Rule("must be a TCP port, 0-65535")]
CommaList = Annotated[list[str], NoDecode]


def _seed(name: str) -> AliasChoices:
    """The seed's own variable name, read instead of the KERNEL_MCP_ one."""
    return AliasChoices(name)


class Settings(BaseSettings):
    """Everything the server can be told. Field docs are the user-facing help."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        # Lets CLI overrides and tests pass field names; the environment is still
        # read only under the prefix or the seed's names.
        populate_by_name=True,
        case_sensitive=False,
    )

    # --- where code comes from, how long it may run -------------------------
    projects_dir: Path = Field(
        default_factory=default_projects_dir,
        # The default may not exist yet: the per-user folder is made on first use
        # (kernel_mcp.folders.prepare). A folder a setting names must exist.
        validate_default=False,
        validation_alias=_seed("PYTHON_PROJECTS_DIR"),
        description="Folder whose .py and .ipynb files may be run; unset: ./python_projects "
        "when the working directory has one, else ~/kernel-mcp/python_projects.",
    )
    timeout: Seconds = Field(
        30.0,
        validation_alias=_seed("PYTHON_TIMEOUT"),
        description="Default per-call time limit, seconds.",
    )
    max_timeout: Seconds = Field(
        600.0,
        validation_alias=_seed("PYTHON_MAX_TIMEOUT"),
        description="Largest time limit a caller may ask for, seconds.",
    )
    interrupt_grace: Seconds = Field(
        3.0, description="After a timeout or cancel, seconds to wait for SIGINT before killing."
    )
    max_file_bytes: Positive = Field(
        2 * 1024 * 1024, description="Largest file that may be run, bytes."
    )
    allow_hardlinks: bool = Field(
        False,
        description="Run files with more than one hard link (one may live outside the folder).",
    )
    projects_shared: bool = Field(
        False,
        description="With several principals, share one projects folder (everyone's code "
        "can change everyone's files) instead of a folder per principal.",
    )
    projects_quota_mb: NonNegative = Field(
        2048, description="Disk a principal's projects folder may use, MiB; 0: no cap."
    )
    write_suffixes: CommaList = Field(
        default_factory=lambda: [".py", ".txt", ".csv", ".json", ".md", ".ipynb"],
        description="File endings write_file may write and read_file may read.",
    )

    # --- runs that outlive a call -----------------------------------------------
    background_max_timeout: Seconds = Field(
        24 * 3600.0, description="Time limit of a background run (and its default), seconds."
    )
    run_retention: Seconds = Field(
        3600.0, description="Seconds a finished background run's result is kept for get_run."
    )
    tasks: bool = Field(
        True, description="Serve MCP tasks (io.modelcontextprotocol/tasks) to clients that ask."
    )
    request_state_keys: SecretStr | None = Field(
        None,
        description="Keys sealing input requests' state (comma-separated; the first seals). "
        "Replicas must share them; unset: a key per process.",
    )

    # --- HTTP ---------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Bind address.")
    port: Port = Field(8000, description="TCP port.")
    token: SecretStr | None = Field(
        None,
        description="Bearer token(s), comma-separated; each token is its own principal "
        "(NAME:TOKEN names it).",
    )
    insecure: bool = Field(False, description="Allow a non-loopback bind without a token.")
    allowed_hosts: CommaList = Field(
        default_factory=list,
        description="Extra Host header values accepted (loopback names always are).",
    )
    allowed_origins: CommaList = Field(
        default_factory=list, description="Browser origins accepted besides same-origin loopback."
    )
    header_timeout: Seconds = Field(
        20.0,
        description="Seconds a request's headers may take to arrive (HTTP 408 after).",
    )
    body_timeout: Seconds = Field(
        60.0,
        description="Seconds a request body may pause between two reads (HTTP 408 after).",
    )
    max_unauthenticated: Positive = Field(
        256,
        description="Connections without a valid token kept at once; past it the oldest "
        "is closed (HTTP 503).",
    )
    max_concurrent_requests: NonNegative = Field(
        32, description="MCP requests in flight at once per principal; 0 = no limit."
    )
    max_calls_per_minute: NonNegative = Field(
        600, description="Tool calls per principal in any 60 s; 0 = no limit."
    )

    # --- kernels ------------------------------------------------------------
    kernel_name: str = Field("python3", description="Jupyter kernelspec to start.")
    kernels: CommaList = Field(
        default_factory=list,
        description="Kernelspecs callers may choose (list_kernels); empty: only kernel_name.",
    )
    pool_size: NonNegative = Field(2, description="Started kernels kept ready.")
    preload: CommaList = Field(
        default_factory=list, description="Modules pooled kernels import in advance."
    )
    memory_limit_mb: NonNegative = Field(
        4096, description="Address-space limit per kernel (RLIMIT_AS), MiB; 0 turns it off."
    )
    admission_mb: NonNegative | None = Field(
        None,
        description="A local kernel is handed out only while the machine has this much "
        "memory available, MiB; unset: memory_limit_mb (1024 if 0), at most a quarter of "
        "the machine's memory; 0 turns the check off.",
    )
    env_allow: CommaList = Field(
        default_factory=list,
        description="Variables passed to kernels even though their names look secret.",
    )
    max_fresh_runs: Positive = Field(
        8, description="Session-less runs at once; more wait their turn (each is a kernel)."
    )

    # --- the kernel sandbox and how kernels start (kernel_mcp/launch) ------
    sandbox: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Sandbox local kernels (bubblewrap): auto = where the machine can, "
        "on = refuse to start without, off = plain child processes.",
    )
    sandbox_bwrap: Path | None = Field(
        None, description="A bwrap binary to use instead of the bundled one (e.g. a setuid one)."
    )
    sandbox_projects: Literal["rw", "ro"] = Field(
        "rw", description="Whether sandboxed kernels may write to the projects folder."
    )
    sandbox_network: bool = Field(
        False, description="Give sandboxed kernels the host's network (pip install, downloads)."
    )
    sandbox_read_paths: CommaList = Field(
        default_factory=list, description="Extra folders sandboxed kernels may read (data sets)."
    )
    sandbox_tmp_mb: Positive = Field(
        1024, description="Size of each sandboxed kernel's private /tmp (and $HOME), MiB."
    )
    sandbox_max_tasks: Positive = Field(
        512, description="Processes and threads per sandboxed kernel."
    )
    fork_kernels: bool = Field(
        True,
        description="Fork new local kernels from a pre-imported template process "
        "(falls back to spawning them when it cannot).",
    )

    # --- remote kernels and shared state (scale-out) -----------------------
    gateway_url: str | None = Field(
        None, description="Jupyter Kernel/Enterprise Gateway base URL; unset = local kernels."
    )
    gateway_token: SecretStr | None = Field(
        None, description="Token the gateway expects (sent as 'Authorization: token ...')."
    )
    gateway_kernel_name: str = Field("python3", description="Kernel spec name the gateway starts.")
    allow_attach: CommaList = Field(
        default_factory=lambda: ["true"],
        description="create_session(kernel_id=...) may attach to a kernel already running on "
        "the gateway (a person's notebook kernel): true (with several principals: none), "
        "false, or the principals that may. Needs KERNEL_MCP_GATEWAY_URL.",
    )
    state_url: str | None = Field(
        None, description="Redis URL for sessions shared by server replicas; unset = in process."
    )
    lease_ttl: Seconds = Field(
        15.0, description="Seconds a dead replica's hold on a session outlives it (shared state)."
    )

    # --- sessions -----------------------------------------------------------
    max_sessions: Positive = Field(32, description="Open sessions, over all principals.")
    session_idle_timeout: SecondsOrNever = Field(
        3600.0, description="Seconds a session may sit unused before its kernel is culled."
    )

    # --- packages for sessions (install_packages, kernel_mcp/packages) -------
    packages: bool = Field(True, description="Let callers install wheels into their sessions.")
    package_index: str | None = Field(
        None, description="PEP 503 simple index to install from; unset: the public index."
    )
    packages_timeout: Seconds = Field(300.0, description="Time limit of one install, seconds.")
    packages_max_mb: Positive = Field(2048, description="Cap on a session's packages, MiB.")
    packages_cache_dir: Path | None = Field(
        None, description="uv's cache, shared by all sessions; unset: ~/.cache/kernel-mcp/uv."
    )

    # --- reply caps (the notebook keeps more) ------------------------------
    max_stream_chars: Positive = Field(
        64 * 1024, description="stdout and stderr each keep at most this many characters."
    )
    max_images: NonNegative = Field(8, description="Images inlined in a reply.")
    max_image_bytes: Positive = Field(
        512 * 1024, description="Largest image inlined in a reply (decoded bytes)."
    )
    max_reply_bytes: Positive = Field(
        900 * 1024,
        description="Whole reply budget; stays under the 1 MiB SSE event limit of MCP clients.",
    )
    max_output_bytes: Positive = Field(
        10 * 1024 * 1024, description="Per-output cap kept in memory and in recorded notebooks."
    )

    # --- watching sessions (view_session, /watch) ------------------------------
    public_url: str | None = Field(
        None,
        description="This server's origin as people's browsers reach it (behind a tunnel or a "
        "proxy): view_session's links start with it. Unset: the origin the client reached.",
    )
    watch_ticket_ttl: Seconds = Field(60.0, description="Seconds a view_session link works (once).")

    # --- notebooks ----------------------------------------------------------
    notebooks_dir: Path = Field(
        default_factory=default_notebooks_dir,
        validate_default=False,
        description="Where recordings, exports and executed copies go; unset: ./notebooks "
        "when the working directory has python_projects/, else ~/kernel-mcp/notebooks.",
    )
    notebook_timeout: Seconds = Field(
        1800.0, description="Total time cap for one run_notebook call, seconds."
    )

    @field_validator(
        "allowed_hosts",
        "allowed_origins",
        "preload",
        "env_allow",
        "sandbox_read_paths",
        "kernels",
        "write_suffixes",
        "allow_attach",
        mode="before",
    )
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("allow_attach")
    @classmethod
    def _attach_switch(cls, value: list[str]) -> list[str]:
        """A single true/false word is the switch; anything else names principals."""
        if len(value) == 1 and value[0].lower() in _SWITCH:
            return ["true"] if _SWITCH[value[0].lower()] else []
        return value

    @field_validator("sandbox_bwrap")
    @classmethod
    def _bwrap_runs(cls, value: Path | None) -> Path | None:
        if value is None or not str(value).strip():
            return None
        resolved = value.expanduser().resolve()
        if not resolved.is_file() or not os.access(resolved, os.X_OK):
            raise ValueError(f"{value} is not an executable file")
        return resolved

    @field_validator("write_suffixes")
    @classmethod
    def _suffixes(cls, value: list[str]) -> list[str]:
        cleaned = []
        for suffix in value:
            suffix = suffix.lower()
            if not suffix.startswith("."):
                suffix = "." + suffix
            if "/" in suffix or suffix == ".":
                raise ValueError(f"{suffix!r} is not a file ending such as .py")
            cleaned.append(suffix)
        return cleaned

    @field_validator("projects_dir")
    @classmethod
    def _projects_dir_exists(cls, value: Path) -> Path:
        resolved = value.expanduser().resolve()
        if not resolved.is_dir():
            raise ValueError(f"folder {value} does not exist")
        return resolved

    @field_validator("gateway_url", "package_index", "public_url")
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

    @model_validator(mode="after")
    def _agree(self) -> Settings:
        """The rules between fields. Each error starts with the variable it names (the
        message ``load_settings`` shows as it is)."""
        if self.max_timeout < self.timeout:
            raise ValueError("PYTHON_MAX_TIMEOUT: must not be smaller than PYTHON_TIMEOUT")
        names = [name for name, _ in self.principals]
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"KERNEL_MCP_TOKEN: two tokens name the principal {twice[0]!r}")
        if self.state_url and not self.gateway_url:
            raise ValueError(
                "KERNEL_MCP_STATE_URL: needs KERNEL_MCP_GATEWAY_URL too "
                "(replicas share sessions only on gateway kernels; local ones are unreachable)"
            )
        if self.state_url and importlib.util.find_spec("redis") is None:
            raise ValueError(
                "KERNEL_MCP_STATE_URL: needs the redis package: pip install 'kernel-mcp[scale]'"
            )
        self._attach_agrees(names)
        origin = urllib.parse.urlsplit(self.public_url or "")
        if origin.path.strip("/") or origin.query or origin.fragment:
            raise ValueError("KERNEL_MCP_PUBLIC_URL: must be an origin only (no path or query)")
        if self.host not in LOOPBACK and not self.tokens and not self.insecure:
            raise ValueError(
                f"KERNEL_MCP_HOST: {self.host} is not loopback; set KERNEL_MCP_TOKEN "
                "or pass --insecure"
            )
        return self

    def _attach_agrees(self, principals: list[str]) -> None:
        """Attaching, asked for explicitly, needs a gateway and no shared state; the
        principals it names must exist."""
        if "allow_attach" not in self.model_fields_set or not self.allow_attach:
            return
        if not self.gateway_url:
            raise ValueError(
                "KERNEL_MCP_ALLOW_ATTACH: needs KERNEL_MCP_GATEWAY_URL (attaching joins a "
                "kernel running on a Jupyter server; this server's kernels are local)"
            )
        if self.state_url:
            raise ValueError(
                "KERNEL_MCP_ALLOW_ATTACH: not with KERNEL_MCP_STATE_URL (replicas do not "
                "attach to kernels they did not start)"
            )
        unknown = [n for n in self.allow_attach if n != "true" and n not in principals]
        if unknown:
            raise ValueError(
                f"KERNEL_MCP_ALLOW_ATTACH: {unknown[0]!r} is not a principal of "
                "KERNEL_MCP_TOKEN (name them as NAME:TOKEN)"
            )

    def attach_refusal(self, principal: str | None) -> str | None:
        """Why ``principal`` may not attach a session to a running kernel; None if it may."""
        if not self.gateway_url:
            return (
                "attaching needs a gateway: this server runs local kernels. Point "
                "KERNEL_MCP_GATEWAY_URL (and KERNEL_MCP_GATEWAY_TOKEN) at the Jupyter server "
                "whose kernel you want to join."
            )
        if self.state_url:
            return "attaching is off with shared sessions (KERNEL_MCP_STATE_URL)."
        if not self.allow_attach:
            return "attaching is turned off on this server (KERNEL_MCP_ALLOW_ATTACH=false)."
        if self.allow_attach == ["true"]:
            if len(self.principals) > 1:
                return (
                    "with several principals, only those KERNEL_MCP_ALLOW_ATTACH names may "
                    "attach to a running kernel."
                )
            return None
        if principal not in self.allow_attach:
            return "your principal may not attach to running kernels (KERNEL_MCP_ALLOW_ATTACH)."
        return None

    @field_validator("notebooks_dir")
    @classmethod
    def _absolute_notebooks_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def allowed_kernels(self) -> list[str]:
        """The kernelspecs callers may choose, the default first."""
        names = [self.kernel_name]
        names += [n for n in self.kernels if n not in names]
        return names

    @property
    def state_keys(self) -> list[str]:
        if self.request_state_keys is None:
            return []
        raw = self.request_state_keys.get_secret_value()
        return [k.strip() for k in raw.split(",") if k.strip()]

    @property
    def tokens(self) -> list[str]:
        """The accepted bearer tokens (empty: no auth)."""
        return [token for _, token in self.principals]

    @property
    def principals(self) -> list[tuple[str, str]]:
        """(principal, token) for each accepted token; see :func:`principal_of`."""
        if self.token is None:
            return []
        entries = [t.strip() for t in self.token.get_secret_value().split(",") if t.strip()]
        return [principal_of(entry) for entry in entries]

    @property
    def per_principal_projects(self) -> bool:
        """Each principal has a projects folder of its own (several tokens, not shared)."""
        return len(self.principals) > 1 and not self.projects_shared

    @classmethod
    def variable(cls, field: str) -> str:
        """The environment variable that feeds ``field`` (for messages)."""
        return setting_name(field)

    def clamp_timeout(self, requested: float | None, *, background: bool = False) -> float:
        """The time limit for one call: the default, or the caller's, capped at max_timeout.

        A background run's default and cap are ``background_max_timeout``.

        Raises:
            InvalidArgument: not a positive, finite number of seconds.
        """
        cap = self.background_max_timeout if background else self.max_timeout
        if requested is None:
            return cap if background else min(self.timeout, cap)
        if not math.isfinite(requested) or requested <= 0:
            raise InvalidArgument("timeout must be a positive number of seconds")
        return min(float(requested), cap)


#: The words KERNEL_MCP_ALLOW_ATTACH takes as a switch.
_SWITCH = {"true": True, "1": True, "yes": True, "on": True}
_SWITCH.update({"false": False, "0": False, "no": False, "off": False})


def _field(name: str) -> str:
    """The field behind a name from an error location (a field name or a seed alias)."""
    for field, info in Settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices) and name.upper() in (str(c) for c in alias.choices):
            return field
    return name


def setting_name(field: str) -> str:
    """The environment variable that feeds ``field`` (for messages)."""
    field = _field(field)
    info = Settings.model_fields.get(field)
    alias = info.validation_alias if info else None
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"{ENV_PREFIX}{field.upper()}"


def _rule(field: str) -> str | None:
    info = Settings.model_fields.get(_field(field))
    for item in info.metadata if info else []:
        if isinstance(item, Rule):
            return str(item)
    return None


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment, ``.env`` and ``overrides`` (CLI flags).

    Raises:
        ConfigError: one line naming the offending setting.
    """
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        if not first["loc"]:  # a rule between fields (Settings._agree): named already
            raise ConfigError(message) from None
        field = str(first["loc"][0])
        raise ConfigError(f"{setting_name(field)}: {_rule(field) or message}") from None
