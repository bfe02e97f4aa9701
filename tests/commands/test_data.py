"""`nexusgen prepare-embeds`: --kind takes the task names, and `gen` (the old spelling) still works."""

import pytest

from nexusgen.cli import main
from nexusgen.data import prepare


@pytest.mark.parametrize(("kind", "task"), [("generate", "generate"), ("gen", "generate"), ("edit", "edit")])
def test_kind_reaches_prepare_embeds_as_a_task(kind, task, tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(prepare, "prepare_embeds", lambda data, model, task, out, **kwargs: calls.append(task) or {})
    data = tmp_path / "d.jsonl"  # --data must exist: it is checked before torch loads
    data.write_text("")
    assert main(["prepare-embeds", "--data", str(data), "--kind", kind, "--out", str(tmp_path / "out")]) == 0
    assert calls == [task]


def test_an_unknown_kind_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare-embeds", "--data", "d.jsonl", "--kind", "both", "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err
