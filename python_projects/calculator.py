"""A few arithmetic functions and a small report of what they compute."""


def add(a: float, b: float) -> float:
    return a + b


def divide(a: float, b: float) -> float:
    if b == 0:
        raise ValueError("cannot divide by zero")
    return a / b


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


if __name__ == "__main__":
    print(f"2 + 3 = {add(2, 3)}")
    print(f"10 / 4 = {divide(10, 4)}")
    print(f"mean of 1..10 = {mean(list(range(1, 11)))}")
