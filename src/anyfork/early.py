"""``import anyfork.early`` as the first import of the main program forks it into the early
template at once (see :func:`anyfork.start_early`): afterwards ``anyfork.new`` and
``anyfork.new_exec`` fork from it and no interpreter is ever exec'd."""

from __future__ import annotations

from ._core._templates import start_early

TEMPLATE = start_early()
