"""The pure core: what a cell is and how it must end, with no torch, no process and no file
but the ones a caller names.

Axes and the model zoo's traits (``axes``, ``zoo``), the recipe catalogue (``recipes``), cells and
scenarios (``cell``, ``scenarios``, ``matrix``, ``shards``, ``visibility``, ``devices``), the
oracle and the verdict (``oracle``, ``classify``, ``verdict``, ``outcomes``), what travels to and
from a worker (``jobspec``: specs and reports; ``jobs``: a job and how it ended;
``zygote_messages``: the zygote's wire), results files and their summary (``results``,
``summary``), and ``errors`` (``UserError``, the one base of every user mistake).

May import: nothing outside ``harness.core``.
"""
