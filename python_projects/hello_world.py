"""The smallest program: prints a greeting."""

print("Hello, World!")
