"""The test suite. A package, so that `from tests import helpers` and the subprocess
workers (`python -m tests.workers.train_worker`) resolve to this folder from the
repository root, whatever else is installed."""
