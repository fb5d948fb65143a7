"""``python -m kernel_mcp`` is ``kernel-mcp``."""

from kernel_mcp.cli import main_entry

main_entry()
