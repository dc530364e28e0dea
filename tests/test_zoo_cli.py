"""`pixelforge convert` (official checkpoint → our safetensors) and `pixelforge models`."""
import pytest
import torch
from safetensors import safe_open

import pixelforge
from conftest import parity_case
from pixelforge.cli import main


def test_convert_official_checkpoint(tmp_path, capsys):
    case, io, folder = parity_case("cfsr_official_x4")
    out = tmp_path / "cfsr_x4.safetensors"
    assert main(["convert", "cfsr_x4", str(folder / "checkpoint.pth"), "-o", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()["pixelforge_model"] == "cfsr_x4"
        assert all(k.startswith(("backbone.", "head.")) for k in f.keys())
    converted = pixelforge.create_model("cfsr_x4", weights=out).eval()
    official = pixelforge.load_official(folder / "checkpoint.pth", "cfsr", case["official"]["kwargs"])
    x = io["input"][..., :24, :20]
    with torch.no_grad():
        assert torch.equal(converted(x), official(x))
    assert [p.name for p in tmp_path.iterdir()] == ["cfsr_x4.safetensors"]  # no temporary file left


@pytest.mark.parametrize("argv, message", [
    (["cfsr_x2", "{ckpt}", "-o", "{tmp}/x.safetensors"], "shape mismatch"),
    (["cfsr_x9", "{ckpt}", "-o", "{tmp}/x.safetensors"], "unknown model 'cfsr_x9'"),
    (["cfsr_x4", "{tmp}/none.pth", "-o", "{tmp}/x.safetensors"], "checkpoint not found"),
    (["cfsr_x4", "{ckpt}", "-o", "{tmp}/x.pth"], "must be a .safetensors file"),
])
def test_convert_errors(tmp_path, capsys, argv, message):
    _, _, folder = parity_case("cfsr_official_x4")
    argv = [a.format(ckpt=folder / "checkpoint.pth", tmp=tmp_path) for a in argv]
    assert main(["convert", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pixelforge convert: error:") and message in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_models_lists_the_zoo(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PIXELFORGE_HOME", str(tmp_path))
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "cfsr_x2.safetensors").write_bytes(b"")
    assert main(["models", "cfsr"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.strip().splitlines()]
    assert rows[0] == ["model", "default", "weights"]
    status = dict(rows[1:])
    assert set(status) == set(pixelforge.list_models("*cfsr*"))
    assert status["cfsr_x2"] == "$PIXELFORGE_HOME" and status["cfsr_x3"] == "-"
    assert status["cfsr_x4"] in ("bundled", "missing")
    assert main(["models", "cfsr_x?"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 4
    assert main(["models", "no_such_model*"]) == 1
    assert "no model matches 'no_such_model*'" in capsys.readouterr().err


def test_checkpoint_problems_are_named(tmp_path):
    """Random bytes are not a checkpoint (they were reported as needing arbitrary Python objects), a folder is a
    folder (was "checkpoint not found"), and a pickle that would run code is refused without running it."""
    import os
    import pickle

    from pixelforge.zoo import CheckpointError, read_checkpoint

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'ran'}",)

    (tmp_path / "random.pth").write_bytes(bytes(range(256)) * 16)
    (tmp_path / "text.pth").write_text("hello, not a checkpoint\n")
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"w": Payload()}))
    torch.save({"w": Payload()}, tmp_path / "evil_zip.pth")
    cases = {"random.pth": "is not a checkpoint (unreadable", "text.pth": "is not a checkpoint (unreadable",
             "empty.pth": "is not a checkpoint (unreadable", "evil.pth": "needs arbitrary Python objects",
             "evil_zip.pth": "needs arbitrary Python objects", "folder": "is a folder, not a checkpoint file"}
    (tmp_path / "folder").mkdir()
    for name, message in cases.items():
        with pytest.raises(CheckpointError, match=message.replace("(", "\\(")) as info:
            read_checkpoint(tmp_path / name)
        assert str(tmp_path / name) in str(info.value)
    assert not (tmp_path / "ran").exists()


def test_saved_weights_have_the_usual_file_mode(tmp_path):
    """Exported safetensors honour the umask (0644 with umask 022) instead of safetensors' private 0600."""
    import os

    old = os.umask(0o022)
    try:
        path = pixelforge.save_weights({"w": torch.ones(2)}, tmp_path / "w.safetensors", {"k": "v"})
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o644
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"k": "v"} and torch.equal(f.get_tensor("w"), torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]
