"""The study's long prompts are long enough on every packaged model that is installed: text
i must have at least 256 + 51 i tokens (claim 5 cuts it to exactly that; claim 1 to at most
512), never padded or repeated (study.measure.long_prompt refuses a short one)."""

import pytest

from kvdirect_interp._weights import PACKAGED
from kvdirect_interp.resources import load_data
from kvdirect_interp.study.measure import long_prompt
from tests.fixtures import packaged_model

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("name", list(PACKAGED))
def test_every_long_prompt_has_the_tokens_the_study_cuts(name):
    model = packaged_model(name)
    texts = load_data("long_prompts.json")["texts"]
    assert len(texts) == 16
    for i in range(len(texts)):
        assert long_prompt(model, i, 256 + 51 * i).shape == (1, 256 + 51 * i)
