"""kernel-mcp: an MCP server that runs Python files and snippets in managed Jupyter kernels."""

#: The one place the version is written: pyproject.toml reads it (setuptools'
#: dynamic version), server.json must match it (tests/unit/test_packaging.py).
__version__ = "0.1.0"

__all__ = ["__version__"]
