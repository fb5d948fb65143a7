"""Fails on purpose, so that you can see how a traceback comes back."""


def risky(values):
    return values[0] / values[1]


print("about to divide by zero")
risky([1, 0])
