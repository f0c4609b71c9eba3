"""Test setup: float32 everywhere, tiny models built on the fly, fixtures under tests/data only."""
import os
import sys

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(__file__))

DATA = os.path.join(os.path.dirname(__file__), "data")

import d2l_golden as _d2l_golden  # noqa: E402  (needs the sys.path entry above)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end test under tests/e2e (deselect with -m 'not slow')")


def pytest_collection_modifyitems(config, items):
    """tests/e2e (training runs, conversions, CLIs, notebooks, parity against transformers / PEFT) is ``slow``;
    ``pytest tests/unit`` runs the fast unit tests alone (under a minute), ``pytest tests`` everything."""
    e2e = os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e") + os.sep
    for item in items:
        if str(item.path).startswith(e2e):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module", params=_d2l_golden.KINDS)
def d2l_golden(request):
    """(kind, z, meta, config, params, intermediates) of one D2L golden fixture; see tests/d2l_golden.py."""
    return _d2l_golden.run(request.param)
