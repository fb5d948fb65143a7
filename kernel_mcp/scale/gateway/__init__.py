"""Kernels on a Jupyter Kernel Gateway or Enterprise Gateway (``KERNEL_MCP_GATEWAY_URL``).

::

    backend.py   GatewayBackend: start, attach to, interrupt and delete kernels (REST)
    protocol.py  GatewayClient: one kernel's channels over the gateway's WebSocket
"""
