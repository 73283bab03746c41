"""Models by hub name: `convert --from-hub` and `from_pretrained("hf-hub:...")` read the user's HF cache.

Nothing is downloaded: a temporary cache is laid out as the hub client lays it out
(``models--OWNER--NAME/refs/<ref>`` holding a commit, ``snapshots/<commit>/<files>``) with the reference
fixture's weights, and the commands run in a fresh process with ``HF_HUB_OFFLINE=1`` and
``HF_HUB_CACHE`` pointing at it (the client reads both when it is imported).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from adaperceiver import from_pretrained, save_pretrained
from adaperceiver.checkpoint import parse_hub_id
from adaperceiver.errors import UserError
from adaperceiver.reference import load_reference

pytest.importorskip("huggingface_hub")

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "official"
MAIN, V1 = "a" * 40, "b" * 40  # commits


def _snapshot(cache: Path, repo: str, ref: str, commit: str, files: dict[str, Path | str]) -> None:
    folder = cache / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / ref).write_text(commit)
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if isinstance(content, Path):
            shutil.copyfile(content, snap / name)
        else:
            (snap / name).write_text(content)


def test_parse_hub_id():
    assert parse_hub_id("hf-hub:owner/name@v1") == ("owner/name", "v1")
    assert parse_hub_id("owner/name") == ("owner/name", None)
    for bad in ("owner/name/x", "", "owner/name@", "own er/name"):
        with pytest.raises(UserError, match="is not a hub model id"):
            parse_hub_id(bad)


def test_convert_from_hub_and_from_pretrained_hf_hub_use_the_offline_cache(tmp_path):
    cache = tmp_path / "hf"
    reference_config = json.dumps(json.loads((FIXTURE / "config.json").read_text())["classification"])
    _snapshot(cache, "authors/ada-ref", "main", MAIN,
              {"config.json": reference_config, "model.safetensors": FIXTURE / "classification.safetensors"})
    _snapshot(cache, "authors/ada-ref", "v1", V1, {"config.json": reference_config})  # no weights at v1
    expected = load_reference(FIXTURE / "classification.safetensors", json.loads(reference_config))
    save_pretrained(expected, tmp_path / "converted")
    _snapshot(cache, "me/ada-converted", "main", MAIN, {n: tmp_path / "converted" / n
                                                        for n in ("config.json", "model.safetensors")})
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import contextlib, io, json, torch
        from adaperceiver import from_pretrained
        from adaperceiver.cli import main
        results = {{}}
        for name, argv in {{
            "main": ["convert", "--from-hub", "authors/ada-ref", "--out", "{out}/main"],
            "commit": ["convert", "--from-hub", "authors/ada-ref@{MAIN}", "--out", "{out}/commit"],
            "no_repo": ["convert", "--from-hub", "authors/nothing", "--out", "{out}/x"],
            "no_revision": ["convert", "--from-hub", "authors/ada-ref@v9", "--out", "{out}/x"],
            "no_file": ["convert", "--from-hub", "authors/ada-ref@v1", "--out", "{out}/x"],
            "both": ["convert", "w.pt", "--from-hub", "authors/ada-ref", "--out", "{out}/x"],
        }}.items():
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = main(argv)
            results[name] = [code, err.getvalue().strip().splitlines()]
        model = from_pretrained("hf-hub:me/ada-converted")
        torch.save(model.state_dict(), "{out}/hub_state.pt")
        try:
            from_pretrained("hf-hub:me/nothing")
        except ValueError as e:
            results["from_pretrained_missing"] = str(e)
        print(json.dumps(results))
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["main"][0] == 0 and r["commit"][0] == 0, r
    want = expected.state_dict()
    for name in ("main", "commit"):
        got = from_pretrained(out / name).state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
        assert json.loads((out / name / "config.json").read_text())["converted_from"].startswith("hf-hub:authors/ada-ref")
    hub_state = torch.load(out / "hub_state.pt")
    assert all(torch.equal(hub_state[k], want[k]) for k in want)
    for name, expected_text in {
        "no_repo": "hub repository 'authors/nothing' is not in the local cache",
        "no_revision": "revision 'v9' of hub repository 'authors/ada-ref' is not in the local cache",
        "no_file": "hub repository authors/ada-ref@v1 has no file model.safetensors in the local cache",
        "both": "not both",
    }.items():
        code, lines = r[name]
        assert code == 2 and len(lines) == 1 and expected_text in lines[0], (name, lines)
    assert "offline mode is on (HF_HUB_OFFLINE)" in r["no_repo"][1][0]
    assert "hub repository 'me/nothing' is not in the local cache" in r["from_pretrained_missing"]


def test_sweep_and_export_take_a_hub_name_and_write_outside_the_cache(tmp_path, tiny_overrides):
    pytest.importorskip("sklearn")  # sweeps sklearn's 8x8 digits
    from adaperceiver.models import create_model
    cache = tmp_path / "hf"
    torch.manual_seed(0)
    from adaperceiver.data import get_dataset
    model = create_model("adaperceiver_tiny", **{**tiny_overrides, "img_size": 8})
    model.data_config = get_dataset("digits", "train").data_config  # prepared as the swept data is
    save_pretrained(model, tmp_path / "digits_model")
    _snapshot(cache, "me/ada-digits", "main", MAIN, {n: tmp_path / "digits_model" / n
                                                     for n in ("config.json", "model.safetensors")})
    work = tmp_path / "work"
    work.mkdir()
    script = textwrap.dedent("""
        import json
        from adaperceiver.cli import main
        codes = [main(["sweep", "--model", "hf-hub:me/ada-digits", "--data", "digits", "--limit", "16",
                       "--latency-batch-sizes", "", "--no-progress"]),
                 main(["export", "--model", "hf-hub:me/ada-digits", "--tokens", "4", "--depth", "1", "--width", "8",
                       "--out", "slim"])]
        print(json.dumps(codes))
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [0, 0]
    assert (work / "me--ada-digits" / "sweep" / "sweep.csv").is_file()  # ./OWNER--NAME/sweep, not in the cache
    assert not any(p.name == "sweep" for p in cache.rglob("*"))
    assert "MB weights (was" in proc.stdout
    slim = from_pretrained(work / "slim")
    assert json.loads((work / "slim" / "config.json").read_text())["slim_of"] == "hf-hub:me/ada-digits"
    assert sum(p.numel() for p in slim.parameters()) < sum(
        p.numel() for p in from_pretrained(tmp_path / "digits_model").parameters())
