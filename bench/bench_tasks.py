"""Task bodies for the benchmarks (a module of its own so every contender imports the same)."""


def trivial(index: int) -> int:
    return index * 2


def spin(seconds: float) -> None:
    import time

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
