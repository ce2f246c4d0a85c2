"""`--engine dask`: the offline engine's work as tasks on a Dask distributed cluster.

Each raw input file is one task running the same reader as one process (`FileJob.read`, the
vectorised per-batch readers and `ActivityTable.from_arrays` inside), which writes that file's
per-(device, unit, service) activity as a Parquet file into a scratch folder every worker and the
client can reach; the client reads those files back and merges them with `ActivityTable.concat`,
exactly as `controller.ingest.sources.load` does. Fingerprints and decisions are then computed per
group of devices on the workers (`controller.engine.partition`). Results are therefore those of
the single process, in the same order.

Without a scheduler address the engine starts a local cluster of worker processes (a machine's
cores); with one (`tcp://host:8786`) it uses that cluster, whose workers must see `scratch`
under the same path (a shared filesystem).
"""

from __future__ import annotations

import importlib
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from controller.base.errors import InputError
from controller.distributed.parquet import read_activity, write_activity
from controller.engine.partition import Parallel
from controller.ingest.flows import IngestStats
from controller.ingest.sources import FileJob, FileResult

DEFAULT_WORKERS = 2


@dataclass(frozen=True)
class DaskSettings:
    """Which cluster and how to use it.

    `scheduler`: address of a running scheduler (None: start a local cluster of `workers`
    processes with `threads` threads each and `memory_limit` each, e.g. "4GiB", None for Dask's
    share of the machine). `scratch`: folder for the Parquet activity (None: a temporary folder,
    local clusters only). `parts`: groups of devices for fingerprints (None: two per worker).
    """

    scheduler: str | None = None
    workers: int = DEFAULT_WORKERS
    threads: int = 1
    memory_limit: str | None = None
    scratch: Path | None = None
    parts: int | None = None

    def __post_init__(self) -> None:
        if self.workers < 1 or self.threads < 1:
            raise InputError("a Dask cluster needs at least one worker with one thread")
        if self.parts is not None and self.parts < 1:
            raise InputError(f"device parts {self.parts}: must be at least 1")
        if self.scheduler is not None and self.scratch is None:
            raise InputError(
                f"scheduler {self.scheduler}: give a scratch folder every worker can reach "
                "(--scratch DIR on a shared filesystem)"
            )


def _read_to_parquet(job: FileJob, out: Path) -> tuple[IngestStats, float] | InputError:
    """A worker's task: read one file, write its activity to `out`, and say how long that took
    (CPU seconds); an unreadable file answers with its error (the client decides whether that
    ends the run)."""
    start = time.process_time()
    try:
        table, stats = job.read()
    except InputError as exc:
        return exc
    write_activity(table, out)
    return stats, time.process_time() - start


def _use_threads(threads: int) -> None:
    """Keep pyarrow's CSV and Parquet threads to the worker's share of the machine."""
    import pyarrow

    pyarrow.set_cpu_count(threads)
    pyarrow.set_io_thread_count(threads)


class DaskEngine:
    """A connection to a Dask cluster for the offline engine; use it as a context manager."""

    def __init__(self, settings: DaskSettings = DaskSettings()) -> None:
        self.settings = settings
        self._client: Any = None
        self._cluster: Any = None
        self._scratch: Path | None = None
        self._owns_scratch = False
        self._files = 0
        # CPU seconds the workers spent reading files, over every `read_files`.
        self.task_seconds = 0.0

    def __enter__(self) -> DaskEngine:
        try:
            # Untyped constructors: the cluster and client are used through `Any`.
            dask: Any = importlib.import_module("distributed")
        except ImportError as exc:
            raise InputError(
                "--engine dask needs Dask distributed: pip install 'svcfp[dask]'"
            ) from exc
        settings = self.settings
        try:
            if settings.scheduler is None:
                self._cluster = dask.LocalCluster(
                    n_workers=settings.workers,
                    threads_per_worker=settings.threads,
                    processes=True,
                    memory_limit=settings.memory_limit or "auto",
                    dashboard_address=":0",
                    host="127.0.0.1",
                )
                self._client = dask.Client(self._cluster)
                # Each worker process has `threads` threads: pyarrow's pools follow suit.
                self._client.run(_use_threads, settings.threads)
            else:
                self._client = dask.Client(settings.scheduler, timeout=30)
        except (OSError, TimeoutError, ValueError) as exc:
            # ValueError: distributed's words for an address it cannot parse.
            self.__exit__(None, None, None)
            where = settings.scheduler or "a local cluster"
            raise InputError(f"cannot start or reach the Dask scheduler ({where}): {exc}") from exc
        if settings.scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="svcfp-dask-"))
            self._owns_scratch = True
        else:
            settings.scratch.mkdir(parents=True, exist_ok=True)
            self._scratch = settings.scratch
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None
        if self._owns_scratch and self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
        self._scratch = None

    @property
    def client(self) -> Any:
        """The `distributed.Client` (only inside the `with` block)."""
        if self._client is None:
            raise RuntimeError("the Dask engine is used outside its with block")
        return self._client

    def workers(self) -> int:
        """How many workers the cluster has now."""
        return len(self.client.scheduler_info()["workers"])

    def map(self, function: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """`function` over `items` as one task each, results in the items' order."""
        if not items:
            return []
        # Data goes to the workers first, so the task graph itself stays small. Keys are unique
        # (hash=False): with content keys, equal items of a later call could take the key of
        # data an earlier call is still releasing, and its tasks then lose their dependencies.
        data = self.client.scatter(list(items), hash=False)
        futures = self.client.map(function, data, pure=False)
        return list(self.client.gather(futures))

    def parallel(self) -> Parallel:
        """Device-partitioned work on this cluster."""
        parts = self.settings.parts or 2 * max(1, self.workers())
        return Parallel(self.map, parts)

    def read_files(self, jobs: Sequence[FileJob]) -> list[FileResult]:
        """Every file as a task writing Parquet activity; the client reads each back."""
        assert self._scratch is not None
        outs = []
        for _job in jobs:
            self._files += 1
            outs.append(self._scratch / f"activity-{self._files:06d}.parquet")
        futures = self.client.map(_read_to_parquet, list(jobs), outs, pure=False)
        results: list[FileResult] = []
        for out, answer in zip(outs, self.client.gather(futures), strict=True):
            if isinstance(answer, InputError):
                results.append(answer)
            else:
                stats, seconds = answer
                self.task_seconds += seconds
                results.append((read_activity(out), stats))
                out.unlink()
        return results

    def peak_memory(self) -> dict[str, int]:
        """Each worker process's peak resident memory so far, in bytes (Linux)."""

        def peak() -> int:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

        return {str(k): int(v) for k, v in self.client.run(peak).items()}
