"""The README's example runs as written on the default packaged model."""

import re
from pathlib import Path

import pytest

from kvdirect_interp import DEFAULT_MODEL
from tests.fixtures import packaged_model

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readmes_example_runs():
    packaged_model(DEFAULT_MODEL)  # skips where the default model is not installed
    (block,) = re.findall(r"^```python\n(.*?)^```$", README.read_text(), re.M | re.S)
    exec(compile(block, "README.md", "exec"), {"__name__": "readme_example"})
