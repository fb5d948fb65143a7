"""Sessions: named, owned kernels whose state persists across calls.

::

    records.py   SessionRecord (what a store keeps), Session (what this process holds)
    store.py     the SessionStore seam, and InProcessStore (sessions die with the process)
    registry.py  SessionRegistry: create, use (one call at a time), interrupt, restart,
                 close, cull
"""
