"""Paths of the checkpoints shipped inside the package (Hugging Face directory layout)."""
import os

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")


def toy_base_dir() -> str:
    """The pretrained toy base model (configs/toy_base.py reproduces it)."""
    path = os.path.join(ASSETS, "toy_base")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"the toy base model is missing from the package ({path}); reinstall hyperlora_jax")
    return path
