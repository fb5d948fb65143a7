import sys

sys.stdout.write("x" * 10_000_000)
sys.stdout.write("\nend of flood\n")
