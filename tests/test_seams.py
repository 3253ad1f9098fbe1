"""No module of keras_mtl reaches into another module's underscore names.

An underscore name (`_helper`, `obj._state`) is private to the module that
defines it: other modules use public functions, methods and attributes.
Underscore attributes of Keras' and keras-hub's own objects (such as
`layer._tracker`) are outside this rule.
"""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "keras_mtl"


def _private(name):
    return name.startswith("_") and not name.startswith("__")


def _modules():
    return {
        path: ast.parse(path.read_text(), filename=str(path))
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def _defined_private_names(tree):
    """Underscore names a module defines: functions, classes, methods,
    class attributes and attributes it assigns on `self`."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names.add(target.id)
                elif isinstance(target, ast.Attribute) and isinstance(
                        target.value, ast.Name) and target.value.id == "self":
                    names.add(target.attr)
    return {n for n in names if _private(n)}


def _on_self(node):
    base = node.value
    if isinstance(base, ast.Name) and base.id in ("self", "cls"):
        return True
    return (isinstance(base, ast.Call) and isinstance(base.func, ast.Name)
            and base.func.id == "super")


def test_no_module_uses_another_modules_private_names():
    modules = _modules()
    owners = {}
    for path, tree in modules.items():
        for name in _defined_private_names(tree):
            owners.setdefault(name, set()).add(path)
    found = []
    for path, tree in modules.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                found += [
                    f"{path.relative_to(PACKAGE)}: imports {alias.name}"
                    for alias in node.names if _private(alias.name)
                ]
            elif (isinstance(node, ast.Attribute) and _private(node.attr)
                  and not _on_self(node)):
                others = owners.get(node.attr, set()) - {path}
                if others and path not in owners.get(node.attr, set()):
                    found.append(
                        f"{path.relative_to(PACKAGE)}:{node.lineno}: "
                        f".{node.attr} of "
                        f"{sorted(p.name for p in others)}"
                    )
    assert not found, "\n".join(found)


def test_the_rule_catches_a_reach_in(tmp_path):
    owner = ast.parse("def _helper():\n    pass\n")
    user = ast.parse("import m\nm._helper()\n")
    names = _defined_private_names(owner)
    reaches = [
        node.attr for node in ast.walk(user)
        if isinstance(node, ast.Attribute) and node.attr in names
        and not _on_self(node)
    ]
    assert reaches == ["_helper"]
