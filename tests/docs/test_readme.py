"""README's promises name their tests: every test it cites must exist, so a renamed or deleted test cannot
leave a guarantee standing without proof."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _collected_node_ids() -> set[str]:
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                         capture_output=True, text=True, cwd=REPO, timeout=300, check=False).stdout
    return {line.split("[")[0] for line in out.splitlines() if "::" in line}


def test_every_test_readme_cites_exists():
    readme = (REPO / "README.md").read_text()
    guarantees = readme[readme.index("## Guarantees"):]
    cited = set(re.findall(r"`(tests/[\w/]+\.py(?:::\w+)?)`", readme))
    assert len(set(re.findall(r"`(tests/[\w/]+\.py(?:::\w+)?)`", guarantees))) >= 20  # the section cites its tests
    ids = _collected_node_ids()
    files = {node.split("::")[0] for node in ids}
    missing = sorted(c for c in cited if (c not in ids if "::" in c else c not in files))
    assert not missing, f"README cites tests that do not exist: {missing}"


def test_no_absolute_paths_of_a_machine_in_tracked_text():
    """Paths of the machine a file was written on mean nothing on the next one."""
    tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=REPO, check=True).stdout
    pattern = re.compile(rb"(?<![\w.])/(?:work|root|home)/[\w.-]+/")
    offenders = []
    for name in tracked.splitlines():
        path = REPO / name
        if path.is_file() and path.suffix not in (".png", ".mp4", ".jpg") and pattern.search(path.read_bytes()):
            offenders.append(name)
    assert not offenders, f"absolute paths in {offenders}"
