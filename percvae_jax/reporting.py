"""Where a run's numbers go: DIR/metrics.jsonl, TensorBoard events, and the log.

TensorBoard files are written with tensorboardX, so no TensorFlow is needed to
write them. Only process 0 of a multi-host run writes.
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import logging


def read_jsonl(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class Reporter:
  """Appends metrics to DIR/metrics.jsonl and DIR's TensorBoard events."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tensorboard = None
    if enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tensorboard = SummaryWriter(workdir)

  def truncate_after(self, step: int) -> None:
    """Forgets lines past `step`, written by a run that stopped before its next save."""
    if not self.enabled or not os.path.exists(self.path):
      return
    kept = [r for r in read_jsonl(self.path) if r["step"] <= step]
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)
    os.replace(tmp, self.path)

  def write(self, step: int, values: dict, split: str = "train") -> None:
    if not self.enabled:
      return
    record = {"step": int(step)}
    if split != "train":
      record["split"] = split
    record.update({k: float(v) for k, v in values.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    for key, value in values.items():
      self._tensorboard.add_scalar(f"{split}/{key}", float(value), int(step))

  def write_images(self, step: int, images: dict[str, np.ndarray]) -> None:
    """HWC uint8 images, one TensorBoard image per entry."""
    if not self.enabled:
      return
    for name, image in images.items():
      self._tensorboard.add_image(name, image, int(step), dataformats="HWC")

  def flush(self) -> None:
    if self.enabled:
      self._tensorboard.flush()

  def close(self) -> None:
    if self.enabled:
      self._tensorboard.close()


def format_terms(values: dict) -> str:
  return " ".join(f"{k}={v:.4g}" for k, v in values.items())


def format_duration(seconds: float) -> str:
  seconds = int(max(0, seconds))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


