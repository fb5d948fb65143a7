import os

print(repr(os.environ.get("FAKE_API_KEY")))
print(repr(os.environ.get("KERNEL_MCP_TOKEN")))
print(repr(os.environ.get("HARMLESS_SETTING")))
