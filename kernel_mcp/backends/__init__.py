"""Where kernels come from.

::

    base.py     KernelBackend: the protocol (start, close; local, sandboxed, cheap_starts)
    local.py    LocalBackend: ipykernel processes on this machine, sandboxed, forked
    process.py  LocalProcess: one spawned kernel process (liveness, group kills)

A remote backend (``kernel_mcp.scale.gateway``) implements the same protocol.
"""
