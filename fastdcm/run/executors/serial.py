"""The serial executor: every batch in this process, no isolation, no start-up cost (``workers=0``)."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Sequence

from . import Factory, WorkerInfo

__all__ = ["SerialExecutor"]


def _no_progress(i: int) -> None:
    return None


class SerialExecutor:
    """Runs every batch in the calling process with one runner. A stop is the caller's
    KeyboardInterrupt: the batch that was running unwinds (its runner removes what it wrote)."""

    def __init__(self, factory: Factory, context: Any, **_: Any) -> None:
        self.runner = factory(context, WorkerInfo(slot=0, own_process=False, stop_signal=None))

    def map_batches(
        self, batches: Iterable[Sequence[Any]], should_stop: Callable[[], bool] | None = None
    ) -> Iterator[tuple[Sequence[Any], list]]:
        for batch in batches:
            if should_stop is not None and should_stop():
                return
            yield batch, self.runner.run_batch(batch, _no_progress, False)

    def stop(self, grace: float = 5.0) -> Iterator[tuple[Sequence[Any], list]]:
        return iter(())

    def close(self, *, abort: bool = False) -> list[Sequence[Any]]:
        close = getattr(self.runner, "close", None)
        if close is not None:
            close()
        return []

    def __enter__(self) -> "SerialExecutor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(abort=exc[0] is not None)
