"""metrics.jsonl: each line appended whole or not at all, a torn last line dropped with a
warning and mended by the next run."""

import json
import logging
import os
import subprocess
import sys

import pytest

from percvae_jax import reporting
from tests import helpers


def test_read_jsonl_drops_a_torn_last_line_with_a_warning(tmp_path, caplog):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n{"step": 3, "lo')
  with caplog.at_level(logging.WARNING):
    records = reporting.read_jsonl(str(path))
  assert records == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4}]
  assert any("torn last line" in m for m in helpers.absl_messages(caplog, logging.WARNING))
  # A damaged line in the middle is not a torn append: it is not hidden.
  path.write_text('{"step": 1, "lo\n{"step": 2, "loss": 0.4}\n')
  with pytest.raises(json.JSONDecodeError):
    reporting.read_jsonl(str(path))


def test_a_metrics_line_is_appended_whole_or_not_at_all(tmp_path, monkeypatch):
  reporter = reporting.Reporter(str(tmp_path))
  reporter.write(1, {"loss": 0.5})
  before = (tmp_path / "metrics.jsonl").read_bytes()
  real_write = os.write
  monkeypatch.setattr(os, "write", lambda fd, payload: real_write(fd, payload[:7]))  # disk full
  with pytest.raises(OSError, match="disk full"):
    reporter.write(2, {"loss": 0.4})
  monkeypatch.undo()
  assert (tmp_path / "metrics.jsonl").read_bytes() == before
  reporter.write(3, {"loss": 0.3})
  reporter.close()
  assert [r["step"] for r in reporting.read_jsonl(str(tmp_path / "metrics.jsonl"))] == [1, 3]


@pytest.mark.slow
def test_a_torn_last_metrics_line_does_not_stop_the_rerun_and_is_mended(tmp_path, caplog):
  workdir = tmp_path / "run"
  helpers.train_tiny(workdir, train__num_steps=4)
  with open(workdir / "metrics.jsonl", "a") as f:
    f.write('{"step": 5, "loss": 0.12')  # the process died in the middle of the append.
  with caplog.at_level(logging.INFO):
    helpers.train_tiny(workdir, train__num_steps=6)
  assert any("torn last line" in m for m in helpers.absl_messages(caplog, logging.WARNING))
  text = (workdir / "metrics.jsonl").read_text()
  assert text.endswith("\n")
  records = [json.loads(line) for line in text.splitlines()]  # every line whole.
  assert [r["step"] for r in records if "split" not in r] == [1, 2, 3, 4, 5, 6]


def test_the_log_line_shows_the_sample_terms_only_when_samples_are_trained(caplog):
  values = {"loss": 1.0, "recon": 0.1, "prior_recon": 0.2, "kl": 0.3, "perceptual": 0.4}
  values["images_per_sec"] = 2.0
  with caplog.at_level(logging.INFO):
    reporting.log_progress(10, 100, values, batch_size=4)
    reporting.log_progress(20, 100, {**values, "sample_perceptual": 0.5, "sample_best": 0.6}, 4)
  plain, with_samples = helpers.absl_messages(caplog, logging.INFO)[-2:]
  assert "perceptual=0.4" in plain and "sample_" not in plain
  assert "sample_perceptual=0.5" in with_samples and "sample_best=0.6" in with_samples


def test_tensorboard_events_are_written_without_importing_torch(tmp_path):
  """tensorboardX would import PyTorch, where installed, at every training's start;
  the Reporter keeps it out, and leaves torch importable for whoever needs it."""
  pytest.importorskip("torch")
  probe = (
    "import sys; from percvae_jax import reporting; import numpy as np\n"
    f"r = reporting.Reporter({str(tmp_path)!r}); r.write(3, {{'loss': 0.5}})\n"
    "r.write_images(3, {'hr': np.zeros((8, 8, 3), np.uint8)}); r.close()\n"
    "print('torch' in sys.modules); import torch; print(torch.__name__)"
  )
  result = subprocess.run(
    [sys.executable, "-c", probe],
    cwd=helpers.REPO,
    env=helpers.subprocess_env(),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split() == ["False", "torch"]
  events = [name for name in os.listdir(tmp_path) if name.startswith("events.out.tfevents")]
  assert events and os.path.getsize(tmp_path / events[0]) > 0
