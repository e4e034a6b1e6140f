"""Code that runs inside worker subprocesses (``python -m harness.worker SPEC``). Imports torch."""
