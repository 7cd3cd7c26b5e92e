"""ONNX export: every released model's graph, run in onnxruntime and OpenCV's dnn, gives
`upscale`'s float output (the Upscaler's, before quantisation), at any size, and the
sampling model's samples too. Skipped where the `export` extra (onnx) is absent."""

import jax
import numpy as np
import pytest

from percvae_jax import config as config_lib
from percvae_jax import export, inference, released
from percvae_jax.models import vae
from tests import helpers

onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """{name: (onnx path, Upscaler, model, params)} of the released models, exported once."""
  folder = tmp_path_factory.mktemp("onnx")
  cache = {}

  def get(name):
    if name not in cache:
      path = str(folder / f"{name}.onnx")
      export.export(path, model=name)
      config, model, params, _ = inference.load_model(name=name)
      cache[name] = (path, inference.Upscaler(model, params, config.data.scale), model, params)
    return cache[name]

  return get


def lr_image(height: int, width: int, seed: int = 0) -> np.ndarray:
  """A smooth random float LR image in [0,1] with some texture."""
  rng = np.random.default_rng(seed)
  coarse = rng.random((height // 3 + 2, width // 3 + 2, 3))
  rows = np.linspace(0, coarse.shape[0] - 1.001, height).astype(int)
  cols = np.linspace(0, coarse.shape[1] - 1.001, width).astype(int)
  return (0.7 * coarse[rows][:, cols] + 0.3 * rng.random((height, width, 3))).astype(np.float32)


def feeds(lr: np.ndarray, noise: np.ndarray | None = None, temperature: float = 0.0) -> dict:
  """The graph's inputs for an HxWx3 LR: NCHW, and zero noise unless given."""
  inputs = {"lr": lr.transpose(2, 0, 1)[None]}
  if noise is not None:
    inputs.update(noise=noise, temperature=np.array([temperature], np.float32))
  return inputs


def run_onnxruntime(path: str, inputs: dict) -> np.ndarray:
  ort = pytest.importorskip("onnxruntime")
  session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
  names = {i.name for i in session.get_inputs()}
  if "noise" in names and "noise" not in inputs:
    _, _, h, w = inputs["lr"].shape
    latent = session.get_inputs()[1].shape[1]
    inputs = dict(inputs, noise=np.zeros((1, latent, h, w), np.float32))
    inputs["temperature"] = np.zeros(1, np.float32)
  return session.run(["sr"], inputs)[0][0].transpose(1, 2, 0)


def run_opencv(path: str, inputs: dict) -> np.ndarray:
  cv2 = pytest.importorskip("cv2")
  net = cv2.dnn.readNetFromONNX(path)
  for name, value in inputs.items():
    net.setInput(value, name)
  return net.forward("sr")[0].transpose(1, 2, 0)


def assert_close(got: np.ndarray, expected: np.ndarray) -> None:
  assert got.shape == expected.shape
  difference = np.abs(got - expected)
  assert difference.mean() < 1e-4 and difference.max() < 1e-3, (difference.mean(), difference.max())


@pytest.mark.parametrize("name", ["x2"])
def test_x2_in_onnxruntime_gives_upscales_output(exported, name):
  path, upscaler, *_ = exported(name)
  for height, width in ((19, 26), (7, 5)):  # one graph, any size
    lr = lr_image(height, width)
    assert_close(run_onnxruntime(path, feeds(lr)), upscaler(lr))


@pytest.mark.slow
@pytest.mark.parametrize("name", released.names())
def test_every_released_model_in_onnxruntime_and_opencv(exported, name):
  path, upscaler, model, _ = exported(name)
  lr = lr_image(21, 30, seed=1)
  expected = upscaler(lr)
  inputs = feeds(lr)
  if model.lr_consistent:
    inputs = feeds(lr, np.zeros((1, model.latent_channels, 21, 30), np.float32), 0.75)
  assert_close(run_onnxruntime(path, inputs), expected)
  assert_close(run_opencv(path, inputs), expected)


@pytest.mark.slow
def test_a_sample_outside_jax_is_the_same_sample(exported):
  """x4-perceptual's graph, fed the noise JAX draws for a key, gives upscale's sample."""
  path, _, model, params = exported("x4-perceptual")
  upscaler = inference.Upscaler(model, params, 4, temperature=0.6)
  lr = lr_image(16, 18, seed=2)
  key = jax.random.PRNGKey(5)
  sample = upscaler(lr, key)
  noise = export.latent_noise(model, params, lr[None], jax.random.fold_in(key, 0))
  assert_close(run_onnxruntime(path, feeds(lr, noise, 0.6)), sample)
  assert_close(run_opencv(path, feeds(lr, noise, 0.6)), sample)
  # The noise matters: the mean is another image.
  assert np.abs(run_onnxruntime(path, feeds(lr, noise, 0.0)) - sample).mean() > 1e-3


def test_the_whole_graph_equals_upscales_tiles(exported):
  """upscale runs an image larger than a tile in overlapping windows; the graph runs it
  whole: the same image."""
  path, _, model, params = exported("x2")
  tiled = inference.Upscaler(model, params, 2, tile=2 * vae.generation_reach(model, params) + 8)
  lr = lr_image(50, 61, seed=3)
  assert len(inference.window_spans(61, tiled.tile, tiled.margin)) > 1
  assert_close(run_onnxruntime(path, feeds(lr)), tiled(lr))


@pytest.mark.parametrize(
  "overrides, added",
  [
    ({"model__block": "pixel_attention"}, ("decoder", "ResBlock_0", "Conv_2")),
    ({"model__latent_blocks": 1}, ("latent_decoder", "ResBlock_0", "Conv_1")),
  ],
  ids=["pixel_attention", "latent_blocks"],
)
def test_optional_layers_export_as_they_run(tmp_path, overrides, added):
  """Pixel-attention blocks (model.block: the gate's 1x1 conv and sigmoid) and the
  latent's own blocks (model.latent_blocks) are in the graph, which gives
  `generate`'s output."""
  config = helpers.tiny_config(data__scale=2, **overrides)
  model = vae.create(config)
  params = vae.init_params(model, config, jax.random.PRNGKey(0))
  # Non-zero output convs, so that every block reaches the output.
  params = jax.tree_util.tree_map_with_path(
    lambda path, p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(len(path)), p.shape), params
  )
  assert added[2] in params[added[0]][added[1]]
  path = str(tmp_path / "model.onnx")
  with open(path, "wb") as f:
    f.write(export.build(model, params, sampling=False).SerializeToString())
  lr = lr_image(12, 15, seed=4)
  expected = model.apply({"params": params}, lr[None], method="generate")[0]
  assert_close(run_onnxruntime(path, feeds(lr)), np.asarray(expected))


def test_bad_requests_are_refused_in_one_line(tmp_path, monkeypatch):
  with pytest.raises(export.ExportError, match=r"\.onnx"):
    export.export(str(tmp_path / "x2.txt"), model="x2")
  with pytest.raises(export.ExportError, match="--model NAME"):
    export.export(str(tmp_path / "x2.onnx"))
  config = config_lib.base()
  config.model.features, config.model.num_blocks = 8, 2
  config.model.lr_consistent, config.data.blur_sigma = True, 1.0
  with pytest.raises(export.ExportError, match="blur_sigma=1.0"):
    export.build(vae.create(config), params=None, sampling=True)  # refused before any weight
  config.model.lr_consistent, config.model.noise_channels = False, 2
  with pytest.raises(export.ExportError, match="noise_channels=2"):
    export.build(vae.create(config), params=None, sampling=False)
  monkeypatch.setitem(__import__("sys").modules, "onnx", None)  # the extra not installed
  with pytest.raises(export.ExportError, match=r"percvae_jax\[export\]"):
    export.export(str(tmp_path / "x2.onnx"), model="x2")


@pytest.mark.slow
def test_command_line(tmp_path):
  done = helpers.run_module("percvae_jax.export", "--model=x2", f"--output={tmp_path / 'x2.onnx'}")
  assert done.returncode == 0, done.stderr
  model = onnx.load(str(tmp_path / "x2.onnx"))
  assert [i.name for i in model.graph.input] == ["lr"]
  dims = model.graph.input[0].type.tensor_type.shape.dim
  assert [d.dim_param or d.dim_value for d in dims] == ["N", 3, "H", "W"]
  refused = helpers.run_module(
    "percvae_jax.export", "--model=x9", f"--output={tmp_path / 'a.onnx'}"
  )
  helpers.assert_one_line_error(refused, "--model='x9' is not a released model")
