"""Specification of ``kernel_mcp.launch.wire``: the fork request, typed once, and the one
codec the fork server and the fork template share. No kernel, no template process."""

from __future__ import annotations

import ast
import dataclasses
import os
import socket
from pathlib import Path

import pytest

from kernel_mcp.launch import wire

TEMPLATE = Path(wire.__file__).with_name("template.py")


def a_request(**changes: object) -> wire.ForkRequest:
    fields: dict[str, object] = {
        "id": "k1",
        "connection_file": "/k/kernel.json",
        "folder": "/k",
        "cwd": "/projects/alice",
        "projects": "/projects",
        "workspace": "/projects/alice",
        "projects_readonly": False,
        "env": {"PATH": "/usr/bin", "LANG": "C.UTF-8"},
        "arguments": ["--HistoryManager.enabled=False"],
        "namespaces": True,
        "network": False,
        "userns": True,
        "home": "/home/kernel",
        "keep": [("/usr/share/fonts", True)],
        "tmp_bytes": 1 << 30,
        "memory_bytes": 4 << 30,
        "max_file_bytes": 2 << 30,
        "max_tasks": 512,
        "setup": {"preload": ["json"], "input": {"message": "no"}},
    }
    fields.update(changes)
    return wire.ForkRequest(**fields)  # type: ignore[arg-type]


def test_a_fork_request_crosses_a_socket_whole_with_its_descriptors() -> None:
    request = a_request()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    read, write = os.pipe()
    try:
        wire.send(ours, request.message(), [read, write])
        message, fds = wire.recv(theirs)
        assert message is not None and message["op"] == "fork"
        assert wire.ForkRequest.from_message(message) == request
        assert len(fds) == 2
        os.write(fds[1], b"x")  # the descriptors are the pipe's
        assert os.read(fds[0], 1) == b"x"
        for fd in fds:
            os.close(fd)
    finally:
        for fd in (read, write):
            os.close(fd)
        ours.close()
        theirs.close()


def test_the_template_s_own_handoff_never_travels() -> None:
    request = a_request(handoff=7)
    assert "handoff" not in request.message()
    assert wire.ForkRequest.from_message(request.message()).handoff is None


@pytest.mark.parametrize(
    ("message", "said"),
    [({"op": "ready"}, "not a fork request"), ({"op": "fork", "id": "k1"}, "without arguments")],
)
def test_what_is_not_a_whole_fork_request_is_refused(message: dict[str, object], said: str) -> None:
    with pytest.raises(ValueError, match=said):
        wire.ForkRequest.from_message(message)


def test_the_end_of_the_stream_and_garbage_close_what_came_with_them() -> None:
    read, write = os.pipe()
    assert wire.decode(b"", [read]) == (None, [])
    assert wire.decode(b"{not json", [write]) == ({"op": "garbled"}, [])
    for fd in (read, write):
        with pytest.raises(OSError):
            os.fstat(fd)  # closed by decode


def test_the_template_reads_only_fields_the_request_declares() -> None:
    """The template reads the request's attributes; each is one of ForkRequest's fields."""
    declared = {f.name for f in dataclasses.fields(wire.ForkRequest)}
    tree = ast.parse(TEMPLATE.read_text(encoding="utf-8"))
    read = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "request"
        and node.attr not in ("message", "from_message")
    }
    assert read, "the template reads the request's fields"
    assert read <= declared, read - declared
