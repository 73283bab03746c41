"""Check a built wheel and sdist: every module and data file of src/adaperceiver is in both, and the
wheel's version is the package's. Usage: python .ci/check_dist.py DIST_DIR (run from the repository root)."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path


def main(dist: Path) -> int:
    version = re.search(r'__version__ = "([^"]+)"', Path("src/adaperceiver/_version.py").read_text()).group(1)
    wheels, sdists = sorted(dist.glob("adaperceiver-*.whl")), sorted(dist.glob("adaperceiver-*.tar.gz"))
    if len(wheels) != 1 or len(sdists) > 1:
        print(f"expected one wheel and at most one sdist in {dist}, found {[p.name for p in dist.iterdir()]}")
        return 1
    if not sdists:
        print("note: no sdist built (the 'build' package is missing); checking the wheel only")
    tracked = subprocess.run(["git", "ls-files", "src/adaperceiver"], capture_output=True, text=True, check=True)
    files = [f.removeprefix("src/") for f in tracked.stdout.split()]
    with zipfile.ZipFile(wheels[0]) as z:
        in_wheel = set(z.namelist())
        metadata = next(z.read(n).decode() for n in in_wheel if n.endswith(".dist-info/METADATA"))
    problems = [f"wheel lacks {f}" for f in files if f not in in_wheel]
    if sdists:
        with tarfile.open(sdists[0]) as t:
            in_sdist = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
        problems += [f"sdist lacks src/{f}" for f in files if f"src/{f}" not in in_sdist]
    if f"\nVersion: {version}\n" not in metadata:
        problems.append(f"wheel metadata does not say Version: {version}")
    if not wheels[0].name.startswith(f"adaperceiver-{version}-"):
        problems.append(f"wheel {wheels[0].name} is not version {version}")
    for p in problems:
        print(p)
    print(f"{wheels[0].name}: {len(files)} package files checked in the wheel" + (" and the sdist" if sdists else "")
          + (f"; {len(problems)} problems" if problems else ", all present"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
