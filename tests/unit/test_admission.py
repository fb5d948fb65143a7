"""Specification of ``kernel_mcp.admission``: a kernel is handed out only while the machine's
available memory covers what it may use. The memory reader is injected: no test needs real
memory pressure."""

from __future__ import annotations

import pytest

from kernel_mcp.admission import MIB, MemoryAdmission, admission_for, default_need
from kernel_mcp.config import load_settings
from kernel_mcp.errors import NotEnoughMemory, RequestError

GIB = 1024 * MIB


def test_a_kernel_is_admitted_while_available_memory_covers_its_need() -> None:
    admission = MemoryAdmission(4 * GIB, available=lambda: 4 * GIB)
    admission.check()  # exactly enough


def test_a_kernel_is_refused_with_what_there_is_what_it_needs_and_what_to_do() -> None:
    admission = MemoryAdmission(4 * GIB, available=lambda: 1536 * MIB)
    with pytest.raises(NotEnoughMemory) as refused:
        admission.check()
    message = str(refused.value)
    assert "1,536 MiB available" in message and "needs 4,096 MiB" in message
    assert "KERNEL_MCP_ADMISSION_MB" in message and "close_session" in message
    assert "\n" not in message
    # A refusal the edge shows the caller as it is (a RequestError).
    assert isinstance(refused.value, RequestError)


def test_a_need_of_zero_admits_everything_without_reading_memory() -> None:
    def unread() -> int:
        raise AssertionError("memory was read")

    MemoryAdmission(0, available=unread).check()


@pytest.mark.parametrize(
    ("limit_mb", "total", "need"),
    [
        (4096, 24 * GIB, 4 * GIB),  # the per-kernel limit
        (4096, 8 * GIB, 2 * GIB),  # at most a quarter of a small machine
        (0, 24 * GIB, 1 * GIB),  # no limit: 1 GiB
        (0, 2 * GIB, GIB // 2),
    ],
)
def test_the_default_need_is_the_memory_limit_capped_at_a_quarter_of_the_machine(
    limit_mb: int, total: int, need: int
) -> None:
    assert default_need(limit_mb, total) == need


def test_the_setting_chooses_the_need_and_a_remote_backend_has_no_admission(tmp_path) -> None:
    chosen = admission_for(load_settings(projects_dir=tmp_path, admission_mb=300), local=True)
    assert chosen is not None and chosen.need == 300 * MIB
    off = admission_for(load_settings(projects_dir=tmp_path, admission_mb=0), local=True)
    assert off is not None and off.need == 0
    assert admission_for(load_settings(projects_dir=tmp_path), local=False) is None
