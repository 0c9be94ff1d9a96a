"""What `pip install` from a source distribution needs: every kernel source in the sdist, every
`#include` resolvable inside it, and every imported third-party package named in the
requirements (setup.py's install_requires reads requirements.txt)."""
import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = {"lc4", "lc4_kernels", "tests", "benchmarks", "scripts"}


def _tracked_files(*folders: str) -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to know which files are tracked")
    out = subprocess.run(["git", "ls-files", *folders], cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.split()


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    """The unpacked source distribution of the tracked files as they are in the working tree,
    built in a copy (an egg-info folder in the checkout would add the files it lists)."""
    checkout = tmp_path_factory.mktemp("checkout")
    for name in _tracked_files("."):
        if (ROOT / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, checkout / name)
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(dist)], cwd=checkout, check=True,
                   capture_output=True)
    (archive,) = dist.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        # the "data" filter where this Python has it (3.12, and backported to 3.10.12 / 3.11.4)
        tar.extractall(dist, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    (unpacked,) = (p for p in dist.iterdir() if p.is_dir())
    return unpacked


def test_sdist_holds_every_kernel_source_and_module(sdist):
    needed = _tracked_files("csrc")
    needed += [f for f in _tracked_files("lc4", "lc4_kernels") if f.endswith(".py")]
    needed += ["setup.py", "requirements.txt", "README.md"]
    missing = [f for f in needed if not (sdist / f).is_file()]
    assert not missing, f"the sdist lacks {missing} (MANIFEST.in)"


def test_sdist_includes_resolve_inside_it(sdist):
    csrc = sdist / "csrc"
    unresolved = []
    for source in sorted(csrc.rglob("*")):
        if source.suffix not in {".h", ".cuh", ".cu", ".cpp"}:
            continue
        for name in re.findall(r'^\s*#\s*include\s+"([^"]+)"', source.read_text(), flags=re.M):
            if not ((source.parent / name).is_file() or (csrc / name).is_file()):
                unresolved.append(f"{source.relative_to(sdist)}: {name}")
    assert not unresolved, f"includes the sdist cannot satisfy: {unresolved}"


def _requirement_names(*files: str) -> set[str]:
    names = set()
    for file in files:
        for line in (ROOT / file).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                names.add(_normalise(re.match(r"[A-Za-z0-9._-]+", line).group(0)))
    return names


def _normalise(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _third_party_imports(*folders: str) -> dict[str, str]:
    """Top-level module imported -> one file importing it, over every .py under the folders."""
    paths = [path for folder in folders for path in sorted((ROOT / folder).rglob("*.py"))]
    local = FIRST_PARTY | {path.stem for path in paths}  # helper modules beside the tests
    found = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names and top not in local:
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def _uncovered(imports: dict[str, str], requirements: set[str]) -> list[str]:
    providers = importlib.metadata.packages_distributions()
    uncovered = []
    for module, where in sorted(imports.items()):
        distributions = {_normalise(d) for d in providers.get(module, [])} | {_normalise(module)}
        if not distributions & requirements:
            uncovered.append(f"{module} (imported in {where}; provided by {sorted(distributions)})")
    return uncovered


def test_the_package_imports_only_what_requirements_txt_names():
    uncovered = _uncovered(_third_party_imports("lc4", "lc4_kernels"), _requirement_names("requirements.txt"))
    assert not uncovered, f"imported by the package but not in requirements.txt: {uncovered}"


def test_tests_and_benchmarks_import_only_what_the_requirement_files_name():
    imports = _third_party_imports("tests", "benchmarks", "scripts")
    uncovered = _uncovered(imports, _requirement_names("requirements.txt", "requirements-dev.txt"))
    assert not uncovered, f"imported by tests, benchmarks or scripts but in no requirements file: {uncovered}"
