import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from detectors.checkpoint import FORMAT_VERSION, METADATA_KEY, load_checkpoint, read_metadata, save_checkpoint
from detectors.errors import BadInputError
from detectors.registry import build_detector

META = {"features": [f"f{i}" for i in range(6)], "classes": ["no", "yes"], "positive_class": 1,
        "scaler": {"lo": [0.0] * 6, "hi": [1.0] * 6}, "data": {"name": "x.csv", "split_seed": 0},
        "defense": {"name": "none"}}


def test_round_trip_gives_same_logits(tmp_path, tiny_detector):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, tiny_detector, metadata=META, train_mean=[0.5] * 6)
    loaded = load_checkpoint(path)
    x = torch.rand(5, 6)
    assert torch.equal(loaded.detector(x), tiny_detector(x))
    assert loaded.metadata["format_version"] == FORMAT_VERSION
    assert loaded.detector.hparams() == tiny_detector.hparams()
    assert torch.allclose(loaded.train_mean, torch.full((6,), 0.5))
    assert not list(tmp_path.glob(".*.tmp"))


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_text("hello")
    with pytest.raises(BadInputError, match="not a safetensors checkpoint"):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(BadInputError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_safetensors_without_metadata(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(BadInputError, match="not an attention-audit checkpoint"):
        load_checkpoint(path)


def _rewrite_metadata(src, dst, change):
    from safetensors import safe_open
    with safe_open(str(src), "pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        meta = json.loads(handle.metadata()[METADATA_KEY])
    change(meta)
    save_file(tensors, str(dst), metadata={METADATA_KEY: json.dumps(meta)})


def test_newer_format_version_is_refused(tmp_path, tiny_detector):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, tiny_detector, metadata=META)
    _rewrite_metadata(path, path, lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(BadInputError, match="newer than this tool reads"):
        read_metadata(path)


def test_metadata_missing_fields(tmp_path, tiny_detector):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, tiny_detector, metadata=META)
    _rewrite_metadata(path, path, lambda m: m.pop("scaler"))
    with pytest.raises(BadInputError, match="lacks scaler"):
        load_checkpoint(path)


def test_truncated_file(tmp_path, tiny_detector):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, tiny_detector, metadata=META)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError):
        load_checkpoint(path)


def test_weights_that_do_not_fit_the_architecture(tmp_path, tiny_detector):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, tiny_detector, metadata=META)
    _rewrite_metadata(path, path, lambda m: m["detector"]["hparams"].update(dim=16, mlp_dim=32))
    with pytest.raises(BadInputError, match="has shape"):
        load_checkpoint(path)


@pytest.mark.parametrize("sizes,match", [({"dim": 10**9}, "has shape|cannot be built"),
                                         ({"depth": 10**4}, "depth 10000, the weights hold 2 blocks"),
                                         ({"n_features": 10**9, "mlp_dim": 10**9}, "has shape|cannot be built")])
def test_absurd_sizes_in_the_metadata_are_refused_before_anything_is_built(tmp_path, tiny_detector, monkeypatch,
                                                                           sizes, match):
    import detectors.checkpoint as checkpoint

    path = tmp_path / "m.safetensors"
    save_checkpoint(path, tiny_detector, metadata=META)
    _rewrite_metadata(path, path, lambda m: m["detector"]["hparams"].update(sizes))
    built = []
    monkeypatch.setattr(checkpoint, "build_detector",
                        lambda kind, hparams: built.append(torch.get_default_device()) or build_detector(kind, hparams))
    with pytest.raises(BadInputError, match=match):
        load_checkpoint(path)
    assert all(device.type == "meta" for device in built)  # nothing allocated


class _Boom:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_a_pickle_is_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(BadInputError):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()
