"""Code that runs inside worker subprocesses (``python -m harness.worker SPEC``); the only
package that imports torch.

``entry`` is the command line, ``job`` runs one spec (for a spawned worker and a forked child
alike), ``fork_server`` is the zygote's child side. A save or load runs in ``one_process`` (its
load recipes in ``one_process_recipes``) or, one process per rank, in ``distributed`` (process
group, models, training, saves; its load recipes in ``distributed_recipes``); ``golden_load``
loads a team's own file. ``models``, ``training``, ``fingerprint`` and ``probe`` are what they
share; ``faults`` injects failures for the harness's own tests.

May import: ``core`` and ``inspect`` (nothing of the orchestrator: the worker is another process).
"""
