"""What both tiers share: hypothesis never times an example (the machine is shared, and
speed is the benchmark's to measure, never a test's).

``tests/unit`` holds the specifications that run on a scripted fake backend (no kernel
process, no server; under a minute); ``tests/integration`` those that need real kernels,
transports, a gateway, Redis or a browser. The helpers both use are here beside this file
(``helpers``, ``launchers``, ``kernels``, ``corpus``).
"""

from __future__ import annotations

from hypothesis import settings

settings.register_profile("kernel-mcp", deadline=None)
settings.load_profile("kernel-mcp")
