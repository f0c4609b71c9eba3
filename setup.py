"""hyperlora_jax: Text-to-LoRA and Doc-to-LoRA hypernetworks in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="hyperlora_jax",
    version="0.1.0",
    description="JAX/Flax Text-to-LoRA and Doc-to-LoRA: hypernetworks that write LoRA adapters for a frozen LLM.",
    packages=find_packages(include=["hyperlora_jax", "hyperlora_jax.*"]),
    package_data={"hyperlora_jax": ["assets/**/*", "assets/*/*/*/*", "assets/*/*/*", "assets/*/*", "assets/*"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.7",
        "flax>=0.10",
        "optax>=0.2",
        "orbax-checkpoint>=0.11",
        "transformers>=4.46",
        "tokenizers>=0.20",
        "tensorflow-datasets>=4.9",
        "importlib_resources",
        "ml-collections>=1.0",
        "absl-py>=2.0",
        "safetensors>=0.4",
        "ml_dtypes>=0.4",
        "numpy>=1.26",
        "pyyaml>=6.0",
        "jinja2>=3.0",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-xdist>=3",
            "torch==2.13.0",
            "peft>=0.15",
            "gguf>=0.10",          # transformers' GGUF loading: the reference side of tests/e2e/test_gguf.py
            "nbclient>=0.10",      # tests/e2e/test_notebooks.py executes colab/*.ipynb headless
            "nbformat>=5.9",
            "ipykernel>=6.29",
        ],
        "tpu": ["jax[tpu]"],
        "cuda": ["jax[cuda12]"],
    },
)
