"""One kernel, and what it produces.

::

    kernel.py       Kernel: execute, interrupt, stop; the only module that reads channels
    execution.py    Execution (what one run produced), Status, the run's callbacks
    process.py      KernelProcess, KernelClient: the seam every backend implements
    outputs.py      IOPub messages -> notebook outputs; ANSI, \\r and \\b; per-output caps
    guards.py       the in-kernel guards (output floods, input()), sent to each kernel
    setup.py        what the guards are called with; what input() says when no one can answer
    kernelspecs.py  which kernelspecs a run may choose
"""
