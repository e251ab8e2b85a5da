"""The long-context texts are long enough on every packaged model that is installed: each
of the 4 texts in long_context.json must have at least 4,300 tokens, so that it can be cut
to the long-context slice's 4,000 tokens with a margin, never padded or repeated."""

import pytest

from kvdirect_interp._weights import PACKAGED
from kvdirect_interp.resources import load_data
from kvdirect_interp.tokens import to_tokens
from tests.fixtures import packaged_model

pytestmark = pytest.mark.integration

MIN_TOKENS = 4300


@pytest.mark.parametrize("name", list(PACKAGED))
def test_every_long_context_text_has_at_least_4300_tokens(name):
    model = packaged_model(name)
    texts = load_data("long_context.json")["texts"]
    assert len(texts) == 4
    counts = [to_tokens(model, text).shape[1] for text in texts]
    assert min(counts) >= MIN_TOKENS, f"{name}: token counts {counts}"
