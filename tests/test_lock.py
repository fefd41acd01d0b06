"""flowrun.lock: `flowrun lock` pins every file a workflow reads (models by kind/name, inputs by path, all
sweep cells); run, plan and test then refuse a file that differs or is not listed (exit 2 at the field's
line, before anything runs); --no-lock and --lock PATH choose; the lock is looked up to the repository root."""

from __future__ import annotations

import json

WF = """\
version: 1
params: {lora: style-a}
sweep:
  grid: {lora: [style-a, style-b]}
nodes:
  model: {type: ReadLoraText, with: {lora_name: "{{ lora }}"}}
  text: {type: ReadText, with: {path: inputs/note.txt}}
  both: {type: Join, in: {left: model, right: text}}
  out: {type: WriteText, in: {text: both}, with: {filename_prefix: "out-{{ lora }}"}}
"""


def _setup(tmp_path, workflow):
    (tmp_path / "models" / "loras").mkdir(parents=True)
    (tmp_path / "models" / "loras" / "style-a.safetensors").write_text("A")
    (tmp_path / "models" / "loras" / "style-b.safetensors").write_text("B")
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs" / "note.txt").write_text("note")
    return workflow(WF)


def test_lock_pins_every_cells_files_and_run_checks_them(cli, workflow, tmp_path):
    wf = _setup(tmp_path, workflow)
    r = cli("lock", wf, "--models-dir", tmp_path / "models")
    assert r.code == 0, r.err
    assert "wrote" in r.out and "3 added, 0 changed, 0 unchanged" in r.out
    lock = json.loads((tmp_path / "flowrun.lock").read_text())
    assert set(lock["models"]) == {"loras/style-a", "loras/style-b"}
    assert lock["models"]["loras/style-a"]["size"] == 1
    assert lock["inputs"] == {"inputs/note.txt": {"sha256": lock["inputs"]["inputs/note.txt"]["sha256"], "size": 4}}
    again = cli("lock", wf, "--models-dir", tmp_path / "models")
    assert "0 added, 0 changed, 3 unchanged" in again.out

    assert cli("run", wf, "--models-dir", tmp_path / "models").code == 0

    (tmp_path / "models" / "loras" / "style-b.safetensors").write_text("B2")  # the file changed under the lock
    r = cli("run", wf, "--models-dir", tmp_path / "models")
    assert r.code == 2 and "Traceback" not in r.err
    assert "wf.yaml:6:" in r.err and "error[lock]" in r.err and "field 'lora_name'" in r.err
    assert f"expected sha256 {lock['models']['loras/style-b']['sha256']}" in r.err and "found" in r.err
    assert cli("plan", wf, "--models-dir", tmp_path / "models").code == 2
    assert cli("run", wf, "--models-dir", tmp_path / "models", "--no-lock").code == 0

    updated = cli("lock", wf, "--models-dir", tmp_path / "models")
    assert "changed   loras/style-b" in updated.out and "0 added, 1 changed, 2 unchanged" in updated.out
    assert cli("run", wf, "--models-dir", tmp_path / "models").code == 0


def test_a_file_the_lock_does_not_list_is_refused(cli, workflow, tmp_path):
    wf = _setup(tmp_path, workflow)
    (tmp_path / "flowrun.lock").write_text(json.dumps({"version": 1, "models": {}, "inputs": {}}))
    r = cli("run", wf, "--models-dir", tmp_path / "models")
    assert r.code == 2
    assert "inputs/note.txt is not in" in r.err and "run `flowrun lock`" in r.err
    assert "loras/style-a is not in" in r.err and "loras/style-b is not in" in r.err


def test_lock_choice_and_where_it_is_found(cli, workflow, tmp_path):
    (tmp_path / "repo" / "flows").mkdir(parents=True)
    (tmp_path / "repo" / ".git").mkdir()
    (tmp_path / "flowrun.lock").write_text("{}")  # above the repository: never used
    wf = workflow(WF.replace("inputs/note.txt", "note.txt"), name="repo/flows/wf.yaml")
    (tmp_path / "repo" / "flows" / "note.txt").write_text("n")
    models = tmp_path / "models" / "loras"
    models.mkdir(parents=True)
    for n in ("style-a", "style-b"):
        (models / f"{n}.safetensors").write_text(n)
    assert cli("run", wf, "--models-dir", tmp_path / "models").code == 0  # no lock inside the repository

    assert cli("lock", wf, "--models-dir", tmp_path / "models", "--lock", tmp_path / "repo" / "pins.lock").code == 0
    (tmp_path / "repo" / "flows" / "note.txt").write_text("changed")
    assert cli("run", wf, "--models-dir", tmp_path / "models").code == 0  # pins.lock is not found by name
    r = cli("run", wf, "--models-dir", tmp_path / "models", "--lock", tmp_path / "repo" / "pins.lock")
    assert r.code == 2 and "note.txt" in r.err and "does not match" in r.err

    (tmp_path / "repo" / "flowrun.lock").write_text("not json")
    broken = cli("run", wf, "--models-dir", tmp_path / "models")
    assert broken.code == 2 and "cannot read the lock" in broken.err and "Traceback" not in broken.err


def test_a_missing_pinned_model_says_how_to_fetch_it(cli, workflow, tmp_path):
    wf = _setup(tmp_path, workflow)
    assert cli("lock", wf, "--models-dir", tmp_path / "models").code == 0
    lock = json.loads((tmp_path / "flowrun.lock").read_text())
    lock["models"]["loras/style-a"]["source"] = "https://example.invalid/style-a.safetensors"
    (tmp_path / "flowrun.lock").write_text(json.dumps(lock))
    (tmp_path / "models" / "loras" / "style-a.safetensors").unlink()
    (tmp_path / "models" / "loras" / "style-b.safetensors").unlink()
    r = cli("run", wf, "--models-dir", tmp_path / "models")
    assert r.code == 2 and r.err.count("error[file]") == 2
    assert "`flowrun models pull` fetches it from https://example.invalid/style-a.safetensors" in r.err
    assert "pins it" in r.err and "it has no source there to fetch it from" in r.err  # style-b
    v = cli("validate", wf, "--models-dir", tmp_path / "models")
    assert v.code == 2 and "`flowrun models pull`" in v.err
