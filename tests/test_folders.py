"""fedft.folders.write_folder: a folder appears whole or not at all, and an existing one is refused, kept or replaced
as asked; no temporary folder is ever left behind."""
import pytest

from fedft.folders import write_folder


def _files(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir())


def test_a_save_that_fails_leaves_nothing(tmp_path):
    def save(tmp):
        (tmp / "half.bin").write_bytes(b"x")
        raise KeyboardInterrupt  # a Ctrl-C mid-way

    with pytest.raises(KeyboardInterrupt):
        write_folder(tmp_path / "out", save)
    assert _files(tmp_path) == []


@pytest.mark.parametrize("exists, kept", [("keep", "theirs"), ("replace", "ours")])
def test_an_existing_folder_is_kept_or_replaced(tmp_path, exists, kept):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "who").write_text("theirs")
    write_folder(tmp_path / "out", lambda tmp: (tmp / "who").write_text("ours"), exists=exists)
    assert (tmp_path / "out" / "who").read_text() == kept and _files(tmp_path) == ["out"]
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755


def test_refuse_never_overwrites_and_mode_is_set(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "who").write_text("theirs")
    with pytest.raises(OSError):
        write_folder(tmp_path / "out", lambda tmp: (tmp / "who").write_text("ours"))
    assert (tmp_path / "out" / "who").read_text() == "theirs" and _files(tmp_path) == ["out"]
    write_folder(tmp_path / "deep" / "keys", lambda tmp: (tmp / "k").write_text("k"), mode=0o700)
    assert (tmp_path / "deep" / "keys").stat().st_mode & 0o777 == 0o700
