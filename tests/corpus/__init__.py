"""Hostile corpora: plain, importable tables of attack cases with their expected outcomes.

Each table builds its cases under a base folder given by the test and holds no
pytest fixtures, so unit tests and server-level tests can share it.
"""
