"""Jupyter Kernel Gateway config: send kernel WebSocket frames without Nagle's delay.

jupyter_server never calls tornado's ``WebSocketHandler.set_nodelay(True)`` on its
kernel WebSocket. The gateway writes several small frames per execute (status busy,
execute_input, execute_reply, status idle), so Nagle's algorithm meets the client's
delayed ACK and most calls wait about 40 ms for nothing (docs/benchmarks.md, case j).

Use it as the gateway's config file, or paste it into the one you have::

    jupyter kernelgateway --config=deploy/gateway_nodelay.py [your flags]

It changes nothing else: the handler opens as before, with TCP_NODELAY set first,
which is what tornado's documentation asks of a handler that sends small messages.
"""

from jupyter_server.services.kernels.websocket import KernelWebsocketHandler

_open = KernelWebsocketHandler.open


async def _open_without_nagle(self, *args, **kwargs):  # type: ignore[no-untyped-def]
    self.set_nodelay(True)
    await _open(self, *args, **kwargs)


KernelWebsocketHandler.open = _open_without_nagle  # type: ignore[method-assign]
