"""Fake processes for core tests: real value files and real leases, in one interpreter.

A "process" is an identifier, a lease descriptor (flock conflicts between descriptors in
one process, so liveness checks see it exactly as they would a separate process) and
prometheus-client's own ``MmapedDict`` writing its files. Killing it closes the lease
descriptor, as the kernel does when a process dies.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client.mmap_dict import MmapedDict, mmap_key

from netpoint_metrics.core import lease


def key(metric: str, sample: str, labels: dict[str, str], help_text: str = "h") -> str:
    return mmap_key(metric, sample, list(labels), list(labels.values()), help_text)


@dataclass
class FakeProcess:
    directory: str
    ident: str = field(
        default_factory=lambda: f"{4000000 + secrets.randbelow(10**6)}-{secrets.token_hex(6)}"
    )
    fd: int = -1
    files: dict[str, MmapedDict] = field(default_factory=dict)
    values: dict[tuple[str, str], float] = field(default_factory=dict)

    def start(self) -> FakeProcess:
        self.fd = lease.acquire(self.directory, self.ident)
        return self

    def _file(self, prefix: str) -> MmapedDict:
        f = self.files.get(prefix)
        if f is None:
            f = self.files[prefix] = MmapedDict(
                os.path.join(self.directory, f"{prefix}_{self.ident}.db")
            )
        return f

    def add(self, prefix: str, k: str, amount: float) -> float:
        v = self.values.get((prefix, k), 0.0) + amount
        self.values[(prefix, k)] = v
        self._file(prefix).write_value(k, v, 0.0)
        return v

    def set(self, prefix: str, k: str, value: float, ts: float = 0.0) -> None:
        self.values[(prefix, k)] = value
        self._file(prefix).write_value(k, value, ts)

    def kill(self) -> None:
        for f in self.files.values():
            f.close()
        self.files.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @property
    def alive(self) -> bool:
        return self.fd >= 0


def samples(metrics) -> dict[tuple[str, tuple], float]:
    """Flatten collected metric families into {(sample name, sorted labels): value}."""
    out = {}
    for m in metrics:
        for s in m.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def db_files(directory: str) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".db"))


def manifest(directory: str) -> dict:
    try:
        with open(os.path.join(directory, "netpoint-archive.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def in_forked_child(body: Callable[[], None]) -> None:
    """Run ``body`` in a forked child (its own value class state); fail on its failure."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "see the child's traceback above"


def use_value_class(cls: type) -> None:
    """Make ``cls`` the value class prometheus-client builds new metrics with."""
    from prometheus_client import values as pc_values

    pc_values.ValueClass = cls


def stock_text(directory: str | os.PathLike[str]) -> str:
    """What prometheus-client's own collector makes of ``directory``: the format check."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    reg = CollectorRegistry()
    MultiProcessCollector(reg, path=str(directory))
    return generate_latest(reg).decode()
