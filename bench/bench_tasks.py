"""Task bodies for the benchmarks (a module of its own so every contender imports the same)."""


def trivial(index: int) -> int:
    return index * 2


def spin(seconds: float) -> None:
    import time

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def hold(size: int, seconds: float, cpu_bound: bool) -> int:
    """Touch ``size`` bytes and keep them for ``seconds``, spinning or sleeping."""
    import time

    block = bytearray(size)
    end = time.monotonic() + seconds
    if cpu_bound:
        while time.monotonic() < end:
            pass
    else:
        time.sleep(seconds)
    return len(block)
