"""scorelab: score-based generative models in pure PyTorch. The one interface is the Denoiser (scorelab.denoisers);
README.md shows the command line and the Python examples."""

from importlib.metadata import version

__version__ = version("scorelab")
