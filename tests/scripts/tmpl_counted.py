"""A module with an import side effect: each import appends the importing pid to the file named by
``$TMPL_COUNTER``, so a test can tell a module inherited through fork from one imported again."""

from __future__ import annotations

import os

IMPORTED_BY = os.getpid()

with open(os.environ["TMPL_COUNTER"], "a") as _f:
    _f.write(f"{IMPORTED_BY}\n")

TABLE = {i: i * i for i in range(1000)}  # stands in for expensive initialisation
