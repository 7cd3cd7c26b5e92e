"""Programs the tests run in fresh processes (`python -m tests.workers.<name>`, from
the repository root): a training, and an import probe."""
