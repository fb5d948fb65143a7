"""What a session is: the record a store keeps, and what this process holds of it."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Literal

from kernel_mcp.kernels.kernel import Kernel

if TYPE_CHECKING:  # the store seam names records; a session only holds a claim
    from kernel_mcp.sessions.store import Claim

__all__ = ["Session", "SessionRecord"]


@dataclass
class SessionRecord:
    """What a session is, as a store keeps it. Times are epoch seconds."""

    id: str
    name: str
    owner: str | None
    kernel_id: str = ""
    created_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    runs: int = 0
    notebook: str | None = None
    """The session's recording, relative to the notebooks folder."""
    lost_state: str | None = None
    """Why the previous kernel was lost; reported once by the next run."""
    busy: bool = False
    """A call holds the session; a claim taken while this is set found a call cut off
    (its process lost the session mid-call)."""
    extra: dict[str, str] = field(default_factory=dict)
    """What a store keeps of the session for its own use (a shared store: which
    process served the last call)."""
    kernel_name: str | None = None
    """The kernelspec the session chose (None: the default); replacements keep it."""
    attached: bool = False
    """The kernel is one someone else started on the Jupyter server, which the session
    attached to (``create_session(kernel_id=...)``): never restarted, replaced or stopped."""
    execution_count: int | None = None
    """The execution_count of the last recorded cell in the current kernel (None:
    unknown); a later cell's count past the next one means others ran code between."""

    def dumps(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def loads(cls, text: str | bytes) -> SessionRecord:
        data = json.loads(text)
        fields = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in fields})


@dataclass(eq=False)
class Session:
    """One session: its record, and what this process holds of it (kernel, lock, claim).

    ``kernel`` is None between a death and its replacement, and for a session
    this process has not attached to (another replica's).
    """

    record: SessionRecord
    kernel: Kernel | None = None
    busy: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_used_mono: float = field(default_factory=time.monotonic)
    claim: Claim | None = field(default=None, repr=False)
    """The claim of the call running now (set by ``use`` and ``hold``)."""
    started: bool = False
    """The running call's work has begun (interrupts go straight to the kernel)."""
    pending_interrupt: bool = False

    # The record's fields, read and written through the session.
    @property
    def id(self) -> str:
        return self.record.id

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def owner(self) -> str | None:
        return self.record.owner

    @property
    def runs(self) -> int:
        return self.record.runs

    @property
    def notebook(self) -> str | None:
        return self.record.notebook

    @notebook.setter
    def notebook(self, value: str | None) -> None:
        self.record.notebook = value

    @property
    def lost_state(self) -> str | None:
        return self.record.lost_state

    @lost_state.setter
    def lost_state(self, value: str | None) -> None:
        self.record.lost_state = value

    @property
    def kernel_id(self) -> str:
        return self.kernel.process.kernel_id if self.kernel is not None else self.record.kernel_id

    @property
    def created_at(self) -> datetime:
        return datetime.fromtimestamp(self.record.created_at, timezone.utc)

    @property
    def last_used(self) -> datetime:
        return datetime.fromtimestamp(self.record.last_used, timezone.utc)

    @property
    def state(self) -> Literal["idle", "busy", "dead"]:
        if self.busy:
            return "busy"
        if self.kernel is None:
            # Not attached here: what the record says.
            return "dead" if self.lost_state else "idle"
        return "dead" if self.kernel.dead else "idle"

    def touch(self, now: float | None = None) -> None:
        """Used now (``now``: epoch seconds of the registry's clock; default the time)."""
        self.record.last_used = time.time() if now is None else now
        self.last_used_mono = time.monotonic()

    def check_held(self) -> None:
        """Check, right before a write on the session's behalf (its recording), that the
        running call still holds the session.

        Raises:
            ClaimLost: the call's claim is no longer valid (with shared sessions:
                another process may be serving the session now).
        """
        if self.claim is not None:
            self.claim.check()
