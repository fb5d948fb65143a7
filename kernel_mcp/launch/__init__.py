"""How local kernels are launched: the sandbox, per-kernel cgroups, and the fork template.

* ``sandbox``    the bubblewrap policy every local kernel runs under, and the start-up probe
* ``cgroups``    a per-kernel cgroup: memory and task limits for the kernel's whole tree
* ``stderr``     a kernel's private stderr, quoted (paths shortened) when it fails to start
"""
