"""Notebooks: the model, running one, where they live, and session recordings.

::

    model.py      cells, metadata, parameters, the set-up cell; writing one
    execute.py    running a notebook cell by cell, papermill-style
    store.py      the notebooks folder: where files go, their modes, who may read them
    recording.py  a session's runs as an append-only journal, rebuilt into its .ipynb
"""
