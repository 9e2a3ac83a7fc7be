"""Package errors render as one line in IPython (a chapter shows one clear error cell)."""
from IPython.core.interactiveshell import InteractiveShell


def test_model_not_available_renders_as_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    shell = InteractiveShell.instance()
    shell.run_cell("import vlmnb\nvlm = vlmnb.load('nobody/no-such-model-xyz')")
    out = capsys.readouterr()
    text = (out.out + out.err).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert lines[0].startswith("ModelNotAvailable:") and "no-such-model-xyz" in lines[0]
