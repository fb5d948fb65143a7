"""Scale-out: optional deployments behind the core's protocols.

::

    gateway.py      kernels on a Jupyter Kernel/Enterprise Gateway (a KernelBackend,
                    and the RemoteKernels a shared session attaches through)
    state.py        Redis primitives: records, leases, name claims, relays, leader lock
    redis_store.py  a SessionStore on them: sessions that replicas share

Nothing in the core imports this package; ``kernel_mcp.deployment`` picks these
implementations when the settings ask for them (``KERNEL_MCP_GATEWAY_URL``,
``KERNEL_MCP_STATE_URL``).
"""
