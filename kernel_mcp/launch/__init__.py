"""How local kernels are launched: the sandbox, per-kernel cgroups, and the fork template.

* ``sandbox``     the bubblewrap policy every local kernel runs under, and the start-up probe
* ``cgroups``     a per-kernel cgroup: memory and task limits for the kernel's whole tree
* ``forkserver``  the server's side of the fork template: kernels forked in milliseconds
* ``template``    what runs inside the template (in the kernel's interpreter; no kernel_mcp)
* ``ready``       waiting for a started kernel to answer, without a fixed delay
* ``stderr``      a kernel's private stderr, quoted (paths shortened) when it fails to start
"""
