"""scripts/patch_branch_ceiling.py on a tiny parts world: the rows it prints, and the patch-source options."""

import pytest

from repo_scripts import load_script

TINY = ["--worlds", "0", "--n-classes", "10", "--n-train", "10", "--n-test", "3", "--epochs", "2", "--anchors", "2"]


def _rows(printed: str) -> dict[str, list[str]]:
    cells = [line.strip("|").split("|") for line in printed.splitlines() if line.startswith("| ")]
    return {c[0].strip(): [x.strip() for x in c[1:]] for c in cells[1:]}  # the first row is the header


@pytest.fixture(scope="module")
def script():
    return load_script("scripts/patch_branch_ceiling.py", "patch_branch_ceiling")


@pytest.mark.slow
def test_ceiling_rows_and_patch_sources(script, tmp_path, capsys):
    script.main([*TINY, "--output", str(tmp_path)])
    full = _rows(capsys.readouterr().out)
    assert len(full) == 7 and full["[CLS] alone"][2] == "+0.00"
    for name, (alone, fused, gain, w) in full.items():
        if name != "[CLS] alone":
            assert 0 <= float(alone) <= 100 and float(w) in script.WEIGHTS
            # the gain is the fused accuracy minus the [CLS] row's, on the same test images
            assert float(gain) == pytest.approx(float(fused) - float(full["[CLS] alone"][1]), abs=0.011)

    script.main([*TINY, "--output", str(tmp_path), "--rows", "learned", "--patch-path", "value"])
    printed = capsys.readouterr().out
    value = _rows(printed)
    assert "patch_path=value" in printed
    assert list(value) == ["[CLS] alone", "learned set (OT), class tokens learned from the phrases"]
    assert value["[CLS] alone"] == full["[CLS] alone"]  # the [CLS] feature does not depend on the patch source
    # one world, two patch sources: two cache entries per split, never one reused for the other
    assert len(list(tmp_path.rglob("train-*/patches.npy"))) == 2 and len(list(tmp_path.rglob("test-*/patches.npy"))) == 2
