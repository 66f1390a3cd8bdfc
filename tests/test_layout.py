"""The shape of the code (SPEC §2): budgets per module and package, and README's
Layout section drawn from the tree — one line per package, every package named."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = ("config", "core", "emailsvc", "tracking", "templates_app", "console")
MAX_MODULE_LINES = 600
MAX_PACKAGE_MODULES = 20


def _packages() -> list[Path]:
    found = []
    for app in APPS:
        for init in sorted((ROOT / app).rglob("__init__.py")):
            if "migrations" not in init.parts:
                found.append(init.parent)
    return found


def _modules(package: Path) -> list[Path]:
    return sorted(path for path in package.glob("*.py") if path.name != "__init__.py")


def test_no_module_is_longer_than_its_budget():
    long = {
        str(path.relative_to(ROOT)): lines
        for package in _packages()
        for path in _modules(package)
        if "migrations" not in path.parts and (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}, f"modules over {MAX_MODULE_LINES} lines"


def test_no_package_holds_more_modules_than_its_budget():
    crowded = {
        str(package.relative_to(ROOT)): count
        for package in _packages()
        if (count := len(_modules(package))) > MAX_PACKAGE_MODULES
    }
    assert crowded == {}, f"packages with more than {MAX_PACKAGE_MODULES} modules"


def _layout_lines() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("- `")]


def test_readme_layout_names_every_package_once():
    named = [re.match(r"- `([\w/]+)/`", line).group(1) for line in _layout_lines()]
    packages = [
        str(package.relative_to(ROOT))
        for package in _packages()
        if not {"management", "commands", "templatetags", "formats", "en"} & set(package.relative_to(ROOT).parts)
    ]
    assert sorted(named) == sorted(packages)


def test_every_package_says_what_it_holds():
    silent = [
        str(package.relative_to(ROOT))
        for package in _packages()
        if package.name in {"core", "emailsvc", "tracking", "templates_app", "console"} or package.parent.name in APPS
        if not ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        and package.name not in {"management", "templatetags", "formats", "migrations"}
    ]
    assert silent == []
