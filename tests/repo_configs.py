"""The repository's configs/*.py, loaded by file path (configs/ is not a package): one loader for every test."""
import importlib.util
import os

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def config_module(name_or_path: str):
    """The module of configs/<name>.py (or of a .py path)."""
    path = name_or_path if name_or_path.endswith(".py") else os.path.join(CONFIGS, f"{name_or_path}.py")
    spec = importlib.util.spec_from_file_location(f"cfg_{os.path.basename(path)[:-3]}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def get_config(name_or_path: str, preset: str):
    """configs/<name>.py:<preset> as the trainer builds it."""
    return config_module(name_or_path).get_config(preset)
