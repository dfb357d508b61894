"""What a new user meets first: the version, the licence, the extras, a fast ``--help``, a one-line message for a
missing extra, scripts named by error messages that exist, the one cache folder, and the loader-worker cap."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import pml_recallk
from pml_recallk import _paths
from pml_recallk._log import log_to_stderr
from pml_recallk.cli import CLI_EXTRA_MODULES
from pml_recallk.experiments import builders, resolve_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**os.environ, **env}
    )


# ----------------------------------------------------------------------------------------- version, licence


def test_one_version_in_pyproject_package_and_changelog():
    version = PYPROJECT["project"]["version"]
    first_entry = re.search(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), flags=re.M).group(1)
    assert pml_recallk.__version__ == version == first_entry


def test_licence_is_mit_like_pml():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in text
    assert PYPROJECT["project"]["license"] == {"text": "MIT"}


@pytest.mark.slow  # builds a wheel: about 8 s on 2 busy cores
def test_the_wheel_ships_py_typed_the_scripts_the_recipes_and_the_licence(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("pml_recallk-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {"pml_recallk/py.typed", "pml_recallk/scripts/fetch_han_fonts.sh", "pml_recallk/scripts/setup_fonts.sh",
               "pml_recallk/experiments/recipes/glyphs.toml"}  # fmt: skip
    assert shipped <= names
    assert any(name.endswith(".dist-info/licenses/LICENSE") or name.endswith(".dist-info/LICENSE") for name in names)


# ----------------------------------------------------------------------------------------------- the extras


def _requirements_closure(roots: list[str]) -> set[str]:
    """Every distribution that installing ``roots`` brings (pml-recallk's own extras read from pyproject.toml,
    the others' dependencies from their installed metadata; extras of other packages are not followed)."""
    own = canonicalize_name(PYPROJECT["project"]["name"])
    seen: set[str] = set()
    stack = [Requirement(text) for text in roots]
    while stack:
        requirement = stack.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        if name == own:
            for extra in requirement.extras:
                stack += [Requirement(t) for t in PYPROJECT["project"]["optional-dependencies"][extra]]
            continue
        if name in seen:
            continue
        seen.add(name)
        try:
            stack += [Requirement(t) for t in importlib.metadata.requires(name) or []]
        except importlib.metadata.PackageNotFoundError:
            pass
    return seen


def _third_party_imports() -> dict[str, Path]:
    """Top-level modules the test files import that are neither the standard library nor the project's own."""
    local = {path.stem for path in (ROOT / "tests").rglob("*.py")} | {"pml_recallk", "tests"}
    found: dict[str, Path] = {}
    for path in (ROOT / "tests").rglob("*.py"):
        tree = ast.parse(path.read_text())
        skipped = {n.args[0].value.split(".")[0] for n in ast.walk(tree) if _is_importorskip(n)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in (m.split(".")[0] for m in modules):
                if module not in sys.stdlib_module_names and module not in local | skipped:
                    found.setdefault(module, path)
    return found


def _is_importorskip(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and getattr(node.func, "attr", None) == "importorskip"
        and bool(node.args)
        and isinstance(node.args[0], ast.Constant)
    )


def test_the_test_extra_installs_what_the_tests_import():
    installed = _requirements_closure([*PYPROJECT["project"]["dependencies"], "pml-recallk[test]"])
    distributions = importlib.metadata.packages_distributions()
    missing = []
    for module, path in sorted(_third_party_imports().items()):
        if module == "tomli":  # imported only on Python 3.10, where the cli extra installs it
            continue
        names = {canonicalize_name(d) for d in distributions.get(module, [module])}
        if not names & installed:
            missing.append(f"{module} (imported by {path.relative_to(ROOT)})")
    assert not missing, f"not installed by pml-recallk[test]: {missing}"


def test_dev_extra_has_nbconvert_for_the_readmes_notebook_command():
    assert "jupyter\nnbconvert --to notebook --execute" in (ROOT / "README.md").read_text()
    assert "nbconvert" in {Requirement(t).name for t in PYPROJECT["project"]["optional-dependencies"]["dev"]}


def test_cli_extra_holds_every_module_the_command_checks():
    cli_extra = {canonicalize_name(Requirement(t).name) for t in PYPROJECT["project"]["optional-dependencies"]["cli"]}
    assert {canonicalize_name(package) for package in CLI_EXTRA_MODULES.values()} <= cli_extra


# ---------------------------------------------------------------------------------------------- the command

NO_TORCH = """
import sys
from pml_recallk.cli import main
for argv in {argvs!r}:
    main(argv)
print("torch loaded:", "torch" in sys.modules)
"""


def test_help_and_usage_errors_do_not_import_torch():
    argvs = [["--help"], ["train", "--help"], ["embed", "--help"], ["retrieve", "--help"], ["train", "--bogus"],
             ["retrieve", "--checkpoint", "x"], []]  # fmt: skip
    done = run_python(NO_TORCH.format(argvs=argvs))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("torch loaded: False")
    assert "embed" in done.stdout and "retrieve" in done.stdout  # the subcommands are listed in --help


MISSING = """
import sys
sys.modules[{module!r}] = None  # as if not installed: importing it raises ImportError
from pml_recallk.cli import main
sys.exit(main(["train", "--epochs", "1"]))
"""


@pytest.mark.parametrize("module", sorted(CLI_EXTRA_MODULES))
def test_a_missing_cli_extra_is_one_line_naming_the_extra(module):
    done = run_python(MISSING.format(module=module))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("pml-recallk: error: the command needs " + CLI_EXTRA_MODULES[module])
    assert 'pip install "pml-recallk[cli]"' in lines[0]


# --------------------------------------------------------------------------- scripts, cache, loader workers


def test_error_messages_name_scripts_that_ship(tmp_path):
    from pml_recallk.datasets import Glyphs, HanGlyphs

    messages = []
    with pytest.raises(FileNotFoundError) as han:
        HanGlyphs(font_dir=tmp_path, cache_dir=tmp_path / "cache")
    messages.append(str(han.value))
    with pytest.raises(ValueError) as glyphs:
        Glyphs(font_dirs=[tmp_path], cache_dir=tmp_path / "cache")
    messages.append(str(glyphs.value))
    for message in messages:
        (script,) = re.findall(r"bash (\S+\.sh)", message)
        assert Path(script).is_file() and Path(script).parent == ROOT / "pml_recallk" / "scripts", message
    # No message in the package names a script by a path that only a clone has.
    sources = "\n".join(path.read_text() for path in (ROOT / "pml_recallk").rglob("*.py"))
    assert not re.search(r"""["'][^"'\n]*bash benchmarks/""", sources)


def _fetch_script_default(*args: str, **env: str) -> str:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PML_RECALLK_")} | env
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "fetch_han_fonts.sh"), "--where", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize("variables", [{}, {"PML_RECALLK_CACHE": "CACHE"}, {"PML_RECALLK_HAN_FONTS": "FONTS"}])
def test_fetch_script_without_a_folder_fills_the_one_han_glyphs_reads(variables, tmp_path, monkeypatch):
    from pml_recallk.datasets.glyphs.han_table import default_font_dir

    for name in ("PML_RECALLK_CACHE", "PML_RECALLK_HAN_FONTS"):
        monkeypatch.delenv(name, raising=False)
    variables = {name: str(tmp_path / value) for name, value in variables.items()}
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert _fetch_script_default(**variables) == str(default_font_dir())
    root = variables.get("PML_RECALLK_CACHE", str(Path.home() / ".cache" / "pml-recallk"))
    assert _fetch_script_default("--small", **variables) == f"{root}/han-fonts-small"  # where the tests look


def test_every_cache_is_under_one_folder(tmp_path, monkeypatch):
    from pml_recallk.datasets.glyphs import han_table
    from pml_recallk.datasets.glyphs import latin as glyphs

    monkeypatch.delenv("PML_RECALLK_HAN_FONTS", raising=False)
    monkeypatch.delenv("PML_RECALLK_CACHE", raising=False)
    default = Path.home() / ".cache" / "pml-recallk"
    folders = (glyphs.default_cache_dir, han_table.default_cache_dir, han_table.default_font_dir)
    assert [f().parent for f in folders] == [default] * 3
    monkeypatch.setenv("PML_RECALLK_CACHE", str(tmp_path))
    assert [f().parent for f in folders] == [tmp_path] * 3
    assert len({f().name for f in folders}) == 3
    assert _paths.cache_root() == tmp_path


def test_loader_workers_are_capped_at_the_cpus_with_one_line(capsys):
    log_to_stderr("pml-recallk")  # as the command does: the library's notes are its logger's records
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    asked = cpus + 977  # a number no other test asks for: the notice is printed once per process and number
    assert builders.loader_workers(resolve_config(overrides=[f"data.num_workers={asked}"])) == cpus
    assert builders.loader_workers(resolve_config(overrides=[f"data.num_workers={asked}"])) == cpus
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"pml-recallk: data.num_workers = {asked} lowered to {cpus}, the CPUs of this machine"]
    assert builders.loader_workers(resolve_config(overrides=["data.num_workers=0"])) == 0
    assert capsys.readouterr().err == ""
