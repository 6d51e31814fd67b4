"""Run the ``redisaq`` command line with this process's wall clock off by ``CLOCK_OFFSET`` s.

``time.time()`` and ``time.time_ns()`` are shifted before the library is imported,
as on a machine whose clock is wrong; monotonic clocks are left alone (they
have no meaning across machines anyway).
"""

from __future__ import annotations

import os
import runpy
import time

_OFFSET = float(os.environ["CLOCK_OFFSET"])
_time, _time_ns = time.time, time.time_ns
time.time = lambda: _time() + _OFFSET
time.time_ns = lambda: _time_ns() + int(_OFFSET * 1e9)

runpy.run_module("redisaq_core.cli.main", run_name="__main__", alter_sys=True)
