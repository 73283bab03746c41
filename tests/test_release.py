"""The release: one version everywhere, `adaperceiver --version`, py.typed, `__all__` on the public modules."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import pkgutil
from pathlib import Path

import pytest

import adaperceiver
from adaperceiver.cli import main

PACKAGE_DIR = Path(adaperceiver.__file__).resolve().parent
CHANGELOG = Path(__file__).resolve().parents[1] / "CHANGELOG.md"


def test_version_is_one_value_everywhere(capsys):
    from adaperceiver._version import __version__

    assert adaperceiver.__version__ == __version__ == "0.4.2"
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"adaperceiver {__version__}"
    try:  # the installed metadata, when the imported package is the installed one (CI's wheel run)
        dist = importlib.metadata.distribution("adaperceiver")
    except importlib.metadata.PackageNotFoundError:
        return
    installed = Path(dist.locate_file("adaperceiver/__init__.py")).resolve()
    if installed == Path(adaperceiver.__file__).resolve():
        assert dist.version == __version__


@pytest.mark.skipif("ADAPERCEIVER_EXPECT_INSTALLED" not in os.environ,
                    reason="set by .ci/release_check, which runs the suite against the installed wheel")
def test_the_suite_runs_against_the_installed_package():
    prefix = Path(os.environ["ADAPERCEIVER_EXPECT_INSTALLED"]).resolve()
    assert PACKAGE_DIR.is_relative_to(prefix) and "site-packages" in PACKAGE_DIR.parts, PACKAGE_DIR
    assert importlib.metadata.distribution("adaperceiver").version == adaperceiver.__version__


@pytest.mark.skipif(not CHANGELOG.is_file(), reason="CHANGELOG.md is not next to the tests (an installed-package run)")
def test_changelog_starts_with_this_version():
    first = next(ln for ln in CHANGELOG.read_text().splitlines() if ln.startswith("## "))
    assert first.startswith(f"## {adaperceiver.__version__}"), first


def test_py_typed_ships_with_the_package():
    assert (PACKAGE_DIR / "py.typed").is_file()


def _library_modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages([str(PACKAGE_DIR)], "adaperceiver.")]
    # the command modules are entry points, not an API; private modules start with "_"
    return [n for n in names if not (n.startswith("adaperceiver.cli.") and n.rsplit(".", 1)[-1] not in
                                     ("options", "config_file")) and not n.rsplit(".", 1)[-1].startswith("_")]


@pytest.mark.parametrize("name", _library_modules())
def test_public_modules_declare_all_and_every_name_exists(name):
    module = importlib.import_module(name)
    assert isinstance(getattr(module, "__all__", None), list), f"{name} has no __all__"
    missing = [n for n in module.__all__ if not hasattr(module, n) and
               importlib.util.find_spec(f"{name}.{n}") is None]
    assert not missing, f"{name}.__all__ names what it does not define: {missing}"
    assert len(set(module.__all__)) == len(module.__all__)
