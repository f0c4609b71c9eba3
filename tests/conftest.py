"""Test setup: float32 everywhere, tiny models built on the fly, fixtures under tests/data only."""
import os
import sys

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(__file__))

DATA = os.path.join(os.path.dirname(__file__), "data")

import d2l_golden as _d2l_golden  # noqa: E402  (needs the sys.path entry above)


@pytest.fixture(scope="module", params=_d2l_golden.KINDS)
def d2l_golden(request):
    """(kind, z, meta, config, params, intermediates) of one D2L golden fixture; see tests/d2l_golden.py."""
    return _d2l_golden.run(request.param)
