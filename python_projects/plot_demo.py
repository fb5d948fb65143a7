"""Rich outputs: a matplotlib figure (image/png) and a table (text/html + text/plain)."""

import math

import matplotlib.pyplot as plt
from IPython.display import HTML, display

xs = [i / 10 for i in range(63)]
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(xs, [math.sin(x) for x in xs], label="sin")
ax.plot(xs, [math.cos(x) for x in xs], label="cos")
ax.legend()
ax.set_title("sin and cos")
plt.show()

rows = [(n, n * n, n**3) for n in range(1, 6)]
table = "".join(f"<tr><td>{a}</td><td>{b}</td><td>{c}</td></tr>" for a, b, c in rows)
display(HTML(f"<table><tr><th>n</th><th>n²</th><th>n³</th></tr>{table}</table>"))

try:
    import pandas as pd
except ImportError:
    print("pandas is not installed; the HTML table above is the rich output")
else:
    # A DataFrame carries both text/html and text/plain; replies show the plain table.
    display(pd.DataFrame(rows, columns=["n", "square", "cube"]))
