"""`verinfer model ...` through its --json output and its one-line errors."""

import json
import subprocess
import sys

from verinfer.models.manifest import MANIFEST_NAME, Manifest


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "verinfer.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_model_build_tiny_then_id__json__agree_with_the_manifest(tmp_path):
    out = tmp_path / "tiny"
    built = run_cli("model", "build-tiny", "--seed", "3", "--out", str(out), "--json")
    assert built.returncode == 0, built.stderr
    data = json.loads(built.stdout)
    manifest = Manifest.load(out / MANIFEST_NAME)
    assert data["model_id"] == "0x" + manifest.model_id.hex()
    assert data["manifest_hash"] == "0x" + manifest.manifest_hash.hex()

    checked = run_cli("model", "id", str(out), "--json")
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["model_id"] == data["model_id"]


def test_model_id__when_a_file_changed__one_line_error_and_exit_1(tmp_path):
    out = tmp_path / "tiny"
    assert run_cli("model", "build-tiny", "--out", str(out)).returncode == 0
    with open(out / "config.json", "a") as f:
        f.write(" ")
    checked = run_cli("model", "id", str(out))
    assert checked.returncode == 1
    assert checked.stdout == ""
    assert checked.stderr.startswith("verinfer: model file config.json does not match the manifest")
    assert len(checked.stderr.strip().splitlines()) == 1


def test_model_id__when_no_manifest__one_line_error_and_exit_1(tmp_path):
    checked = run_cli("model", "id", str(tmp_path))
    assert checked.returncode == 1
    assert checked.stderr.strip() == f"verinfer: no {MANIFEST_NAME} in {tmp_path}"


def test_model_manifest__of_a_model_directory__writes_it_and_id_checks(tmp_path):
    out = tmp_path / "tiny"
    assert run_cli("model", "build-tiny", "--seed", "4", "--out", str(out)).returncode == 0
    (out / MANIFEST_NAME).unlink()  # as a directory fresh from a model hub would be
    made = run_cli(
        "model", "manifest", str(out), "--name", "my-model", "--revision", "r1", "--json"
    )
    assert made.returncode == 0, made.stderr
    data = json.loads(made.stdout)
    manifest = Manifest.load(out / MANIFEST_NAME)
    assert (manifest.name, manifest.revision, manifest.dtype) == ("my-model", "r1", "bfloat16")
    assert "config.json" in manifest.files
    assert data["model_id"] == "0x" + manifest.model_id.hex()
    checked = run_cli("model", "id", str(out), "--json")
    assert json.loads(checked.stdout)["model_id"] == data["model_id"]


def test_model_manifest__bad_dtype__one_line_error_and_exit_1(tmp_path):
    made = run_cli(
        "model", "manifest", str(tmp_path), "--name", "m", "--revision", "r", "--dtype", "int3"
    )
    assert made.returncode == 1
    assert made.stderr.startswith("verinfer: dtype 'int3' not in")
    assert len(made.stderr.strip().splitlines()) == 1


def test_model_fetch_smollm2__checked_cache__pinned_id__same_as_import_gguf():
    from verinfer.models.smollm2 import SMOLLM2_MODEL_ID, smollm2_dir

    fetched = run_cli("model", "fetch", "smollm2", "--json")
    assert fetched.returncode == 0, fetched.stderr
    data = json.loads(fetched.stdout)
    assert data["model_id"] == SMOLLM2_MODEL_ID
    assert (data["name"], data["revision"]) == (
        "SmolLM2-135M-Instruct",
        "gguf-b179c9523d0e6a0f-import1",
    )
    assert data["path"] == str(smollm2_dir())
    imported = run_cli("model", "import-gguf", "--json")  # the packaged GGUF: the same cache
    assert json.loads(imported.stdout) == data


def test_model_import_gguf__errors_one_line(tmp_path):
    no_out = run_cli("model", "import-gguf", str(tmp_path / "x.gguf"))
    assert no_out.returncode == 2
    assert "--out is required with a GGUF path, --name or --revision" in no_out.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    busy = run_cli(
        "model", "import-gguf", str(tmp_path / "m.gguf"), "--out", str(tmp_path / "full")
    )
    assert (busy.returncode, busy.stderr) == (1, f"verinfer: {tmp_path / 'full'} is not empty\n")
    bad = run_cli("model", "import-gguf", str(tmp_path / "m.gguf"), "--out", str(tmp_path / "o"))
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
    assert bad.stderr.startswith(f"verinfer: {tmp_path / 'm.gguf'} does not load as a causal LM")
