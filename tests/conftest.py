"""Test setup: float32 everywhere, tiny models built on the fly, fixtures under tests/data only."""
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(__file__))

DATA = os.path.join(os.path.dirname(__file__), "data")
