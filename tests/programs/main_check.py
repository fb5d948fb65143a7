import os
import sys

print(__name__, os.path.basename(__file__), [os.path.basename(a) for a in sys.argv], os.getcwd())
answer = 42
