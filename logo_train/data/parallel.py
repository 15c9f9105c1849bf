"""Ordered, chunked process-pool map with a progress bar (rendering and image checks)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from tqdm.auto import tqdm


def map_chunks(
    fn: Callable[..., list],
    items: Sequence,
    *args: Any,
    chunk: int = 32,
    workers: int = 1,
    desc: str = "",
    unit: str = "it",
    progress: bool = True,
) -> Iterator:
    """Yield ``fn(items[i:i+chunk], *args)``'s results flattened, in input order.

    ``fn`` must be a module-level function (it is pickled to the workers); ``workers <= 1``
    runs in this process. Results come back in order, so output is independent of ``workers``.
    """
    jobs = [(items[i : i + chunk], *args) for i in range(0, len(items), chunk)]
    bar = tqdm(total=len(items), desc=desc, unit=unit, disable=not progress)
    try:
        if workers <= 1:
            results: Iterator[list] = (fn(*job) for job in jobs)
            for out in results:
                bar.update(len(out))
                yield from out
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for out in pool.map(fn, *zip(*jobs, strict=True)):
                    bar.update(len(out))
                    yield from out
    finally:
        bar.close()
