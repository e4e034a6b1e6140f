"""Certification: what teams read and compare. ``diff`` (two results files, cell by cell, one
verdict), ``report`` (Markdown and a self-contained HTML page) and ``golden`` (a team's own
checkpoint files as cells: ``golden record`` and ``golden verify``, run by the run use case).

May import: ``core``, ``inspect`` (a DCP folder's marker), ``launchers`` (the launcher a golden
job runs on) and ``run``.
"""
