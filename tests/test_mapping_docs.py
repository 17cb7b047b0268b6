"""docs/mapping.md stays runnable: every YAML block marked `<!-- complete profile -->` is a
profile that check-mapping accepts without a warning, next to the shipped mappings it may
extend (issue 16, Tests)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from bridge.cli import main

from mapping_helpers import ROOT, SHIPPED

DOCS = ROOT / "docs" / "mapping.md"
_BLOCK = re.compile(r"<!-- complete profile -->\n```yaml\n(.*?)```", re.DOTALL)


def _blocks() -> list[tuple[int, str]]:
    text = DOCS.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in _BLOCK.finditer(text)]


def test_the_docs_mark_their_complete_profiles() -> None:
    # The first mapping, the extends example, the omit example and the patient profile.
    assert len(_blocks()) >= 4


@pytest.mark.parametrize(("line", "block"), _blocks(), ids=lambda v: str(v)[:30])
def test_each_complete_profile_of_the_docs_passes_check_mapping(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], line: int, block: str) -> None:
    folder = tmp_path / "mappings"
    shutil.copytree(SHIPPED, folder)  # the bases and lookup tables an example may use
    file = folder / f"docs-line-{line}.yaml"
    file.write_text(block, encoding="utf-8")
    code = main(["check-mapping", str(file)])
    out, err = capsys.readouterr()
    assert code == 0, f"docs/mapping.md:{line}: {err}"
    assert " ok (" in out and "warning" not in out, f"docs/mapping.md:{line}: {out}"
