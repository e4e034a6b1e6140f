"""ckpt-matrix: certify how PyTorch models survive save and load across device layouts.

Importing this package has no side effects: it imports neither torch nor CUDA. The code that
touches torch lives in :mod:`harness.worker` and runs only in worker subprocesses.
"""

__version__ = "0.1.0"
