"""The family layer's shape: node files reach families only through `nodes.families`, the family
modules never import the package that lists them (no import circle), and every family module
offers the family API."""
import ast
from pathlib import Path

NODES = Path(__file__).resolve().parents[1] / "nodes"
FAMILIES = NODES / "families"
FAMILY_API = ("matches", "attention_layers", "default_layers", "patch_attention")


def listed_families():
    """The module names in `nodes/families/__init__.py`'s FAMILIES tuple, read from its source."""
    tree = ast.parse((FAMILIES / "__init__.py").read_text())
    value = next(n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "FAMILIES")
    return tuple(element.id for element in value.elts)


FAMILY_MODULES = listed_families()


def relative_imports(path):
    """(level, module, names) of each relative import in `path`."""
    tree = ast.parse(path.read_text())
    return [(n.level, n.module or "", [a.name for a in n.names]) for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.level > 0]


def test_node_files_import_only_the_family_api():
    node_files = sorted(NODES.glob("*.py"))
    assert len(node_files) >= 10
    for path in node_files:
        for level, module, names in relative_imports(path):
            assert not module.startswith("families."), f"{path.name} imports nodes.{module}: use nodes.families"
            assert not (module == "" and level == 1 and "families" in names), path.name


def test_family_modules_do_not_import_the_family_package():
    modules = sorted(p for p in FAMILIES.glob("*.py") if p.name != "__init__.py")
    assert {p.stem for p in modules} >= set(FAMILY_MODULES)
    for path in modules:
        for level, module, names in relative_imports(path):
            assert not (level == 1 and module == "" and set(names) & {"FAMILIES", "family_of"}), path.name
            # The layer sits below the node files: nothing in it imports from nodes/ itself.
            assert level != 2, f"{path.name} imports from nodes.{module or names}"


def test_every_family_module_defines_the_family_api():
    assert {"unet", "flux", "flux2", "qwen_image", "sd3"} <= set(FAMILY_MODULES)
    for name in FAMILY_MODULES:
        tree = ast.parse((FAMILIES / f"{name}.py").read_text())
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert set(FAMILY_API) <= defined, f"families/{name}.py lacks {sorted(set(FAMILY_API) - defined)}"
