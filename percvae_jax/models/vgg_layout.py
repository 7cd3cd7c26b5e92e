"""VGG16's layout as torchvision's ``vgg16().features`` has it: the names and shapes of
its convs and its taps. Shared by the model (vgg.py) and the weight files
(pretrained.py), which need no Flax module to check a file.
"""

# One tap per block: the last ReLU before each max-pool (and the last one of block 5).
TAPS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")

# (output channels, number of 3x3 convs) per block, as in the original VGG16 ("D").
BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


def conv_layout() -> list[tuple[str, int, int, int]]:
  """(name, block, input channels, output channels) of each conv, in network order."""
  layout = []
  in_channels = 3
  for block, (width, n_convs) in enumerate(BLOCKS, start=1):
    for index in range(1, n_convs + 1):
      layout.append((f"conv{block}_{index}", block, in_channels, width))
      in_channels = width
  return layout


CONV_NAMES = tuple(name for name, _, _, _ in conv_layout())

# conv name -> {"kernel": HWIO shape, "bias": shape}; what every weights file must hold.
PARAM_SHAPES = {
  name: {"kernel": (3, 3, c_in, c_out), "bias": (c_out,)} for name, _, c_in, c_out in conv_layout()
}
