"""Files in the projects folder, and whose folder is whose.

::

    guard.py       the path guard: which files may be read or run (no escape, no race)
    write.py       atomic writes: a project file through the guard, a whole file at once
    listing.py     the bounded glob walk behind list_files
    names.py       the name rule for sessions and notebooks
    workspaces.py  a projects folder per principal, and its disk cap
"""
