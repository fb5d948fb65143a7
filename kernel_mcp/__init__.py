"""kernel-mcp: an MCP server that runs Python files and snippets in managed Jupyter kernels."""

__version__ = "0.1.0"

__all__ = ["__version__"]
