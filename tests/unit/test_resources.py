"""The packaged data files, read with importlib.resources (as from an installed wheel)."""

import json
from pathlib import Path

import pytest

import kvdirect_interp
from kvdirect_interp.resources import data_files, load_data

NAMES = [
    "chat_20_turns.json",
    "devices.json",
    "long_context.json",
    "long_prompts.json",
    "patch_pairs.json",
    "prompts.json",
    "tasks.json",
]
PACKAGE_DATA = Path(kvdirect_interp.__file__).parent / "data"


def test_data_files_lists_the_packaged_json():
    assert data_files() == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_load_data_parses_each_file(name):
    data = load_data(name)
    assert isinstance(data, dict) and data
    assert data == json.loads((PACKAGE_DATA / name).read_text(encoding="utf-8"))


def test_known_contents():
    assert load_data("prompts.json")["prompts"]
    assert len(load_data("chat_20_turns.json")["turns"]) == 20


@pytest.mark.parametrize("name", ["nope.json", "prompts", "../pyproject.toml", "", None])
def test_unknown_name_names_the_accepted_ones(name):
    with pytest.raises(FileNotFoundError, match="accepted names: " + ", ".join(NAMES)):
        load_data(name)


def test_top_level_data_is_a_symlink_to_the_package_data():
    """In a checkout, data/ (where people look) is the package's data folder."""
    top = Path(kvdirect_interp.__file__).parents[1] / "data"
    if not top.exists() and not top.is_symlink():
        pytest.skip("not a checkout (an installed wheel)")
    assert top.is_symlink() and top.readlink() == Path("kvdirect_interp/data")
    assert top.resolve() == PACKAGE_DATA.resolve()
