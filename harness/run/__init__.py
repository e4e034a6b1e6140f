"""Running a matrix: from options to a finished results file.

``options`` (what a user chooses, spelled once for both front doors), ``planning`` (options to
cells: inventory, GPU subsets, scenarios, shard), ``jobs`` (cells to worker jobs and their
environment), ``artifacts`` (save once, load many), ``runner`` (one cell to one result; the cell
loop), ``environment`` (the results file's first line), ``inventory`` (the machine's GPUs),
``workdirs`` (a run's held work folder), ``progress`` (what a person sees while it runs),
``signals`` (Ctrl-C and SIGTERM) and ``usecase``: the one run that every front door calls.

May import: ``core`` and ``launchers``.
"""
