"""The sample agent's file tools stay inside the folder they are given, and calls wait for a yes:
real files, real symbolic links, the real agent loop driven by a scripted model."""
import importlib.util
from pathlib import Path

import pytest

from mmsdk.agent import run_agent
from mmsdk.types import Reply, ToolCall

_spec = importlib.util.spec_from_file_location("sample_agent", Path(__file__).parents[1] / "samples" / "agent.py")
sample = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sample)


@pytest.fixture
def folders(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "a.txt").write_text("1\n2\n")
    (root / "sub" / "b.txt").write_text("3\n")
    (outside / "secret.txt").write_text("s\ns\ns\n")
    (root / "link.txt").symlink_to(outside / "secret.txt")
    (root / "linkdir").symlink_to(outside, target_is_directory=True)
    find_files, count_lines = sample.file_tools(root)
    return root, outside, find_files, count_lines


def test_paths_under_the_root_work(folders):
    root, _, find_files, count_lines = folders
    # paths come back relative to the root, so the model copies short strings into the next call
    assert find_files(str(root), "**/*.txt") == ["a.txt", "sub/b.txt"]
    assert find_files("sub", "*.txt") == ["sub/b.txt"]  # a folder relative to the root
    assert count_lines(["a.txt", str(root / "sub" / "b.txt")]) == 3


@pytest.mark.parametrize("path", ["../outside/secret.txt", "/etc/passwd", "link.txt", "linkdir/secret.txt",
                                  "sub/../../outside/secret.txt", "~/.bashrc"])
def test_escapes_are_refused_with_a_clear_error(folders, path):
    root, _, _, count_lines = folders
    with pytest.raises(sample.OutsideRoot, match="outside the folder this agent may use") as e:
        count_lines([path])
    assert repr(path) in str(e.value) and str(root) in str(e.value)


def test_find_files_never_lists_outside(folders):
    root, outside, find_files, _ = folders
    with pytest.raises(sample.OutsideRoot):
        find_files(str(outside), "*.txt")
    with pytest.raises(sample.OutsideRoot, match="without '..'"):
        find_files(str(root), "../outside/*.txt")
    listed = find_files(str(root), "*.txt")
    assert "a.txt" in listed and "link.txt" not in listed  # a link out is not listed


def test_a_refused_path_goes_back_to_the_model_and_nothing_is_read(folders):
    root, outside, find_files, count_lines = folders

    class Scripted:
        def __init__(self):
            self.turns = [[ToolCall("count_lines", {"paths": [str(outside / "secret.txt")]})]]

        def chat(self, messages, tools=None, tool_choice="auto", **kw):
            if self.turns and tool_choice != "none":
                return Reply(text="", tool_calls=self.turns.pop(0))
            return Reply(text="done")

    result = run_agent(Scripted(), "count", [find_files, count_lines], max_steps=1)
    assert result.steps[0].result is None and "OutsideRoot" in result.steps[0].error


def test_calls_wait_for_a_yes(folders, monkeypatch):
    _, _, _, count_lines = folders
    asked = []
    answers = iter(["n", "y"])

    def fake_input(prompt):
        asked.append(prompt)
        return next(answers)

    monkeypatch.setattr("builtins.input", fake_input)
    call = ToolCall("count_lines", {"paths": ["a.txt"]})

    class Scripted:
        def __init__(self):
            self.turns = [[call], [call]]

        def chat(self, messages, tools=None, tool_choice="auto", **kw):
            if self.turns and tool_choice != "none":
                return Reply(text="", tool_calls=self.turns.pop(0))
            return Reply(text="done")

    result = run_agent(Scripted(), "count", [count_lines], max_steps=2, approve=sample.ask_user)
    assert len(asked) == 2 and "count_lines" in asked[0]
    assert not result.steps[0].approved and result.steps[0].result is None
    assert result.steps[1].approved and result.steps[1].result == 2
