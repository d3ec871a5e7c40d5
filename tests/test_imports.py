"""The package's dependencies run one way (utilities -> model -> data -> sharding -> checkpoint ->
finetune -> infer -> evaluate / generate -> train -> command lines), with no cycle, and imports inside
functions only defer an optional dependency, saying so."""
import ast
import os

import neojax

PACKAGE = os.path.dirname(neojax.__file__)
LAYERS = [  # a module may import its own layer (no cycle) or a lower one
    ("neojax", "neojax.registry", "neojax.cli", "neojax.tree", "neojax.files", "neojax.paths",
     "neojax.errors"),
    ("neojax.model", "neojax.flops"),
    ("neojax.data",),
    ("neojax.sharding",),
    ("neojax.checkpoint",),
    ("neojax.finetune",),
    ("neojax.infer",),
    ("neojax.evaluate", "neojax.generate"),
    ("neojax.train", "neojax.serve"),
    ("neojax.testing", "neojax.benchmark", "neojax.convert", "neojax.prune", "neojax.evaluate.__main__",
     "neojax.train.__main__", "neojax.serve.__main__", "neojax.generate.__main__"),
]


def modules() -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                dotted = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
                out[dotted.removesuffix(".__init__")] = path
    return out


def layer(module: str) -> int:
    best = None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (i, len(prefix))
    assert best is not None, f"{module} has no layer: add it to LAYERS"
    return best[0]


def imports(path: str, known: dict) -> list[tuple[str, int, bool, str]]:
    """(imported neojax module, line, inside a function, source line) of one file."""
    source = open(path).read()
    lines = source.splitlines()
    tree = ast.parse(source)
    inner = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        else:
            continue
        for name in names:
            out.append((name, node.lineno, id(node) in inner, lines[node.lineno - 1]))
    return out


def test_dependencies_point_down_and_have_no_cycle():
    known = modules()
    graph = {m: set() for m in known}
    upward = []
    for module, path in known.items():
        for name, line, _, _ in imports(path, known):
            if name in known and name != module:
                graph[module].add(name)
                if layer(name) > layer(module):
                    upward.append(f"{module}:{line} imports {name}")
    assert not upward, upward
    state = {}

    def visit(m, trail):
        if state.get(m) == "done":
            return
        assert state.get(m) != "open", f"import cycle: {' -> '.join(trail + [m])}"
        state[m] = "open"
        for n in sorted(graph[m]):
            if n != m and not m.startswith(n + "."):  # a package importing its own submodules is fine
                visit(n, trail + [m])
        state[m] = "done"

    for m in sorted(graph):
        visit(m, [])


def test_imports_inside_functions_only_defer_optional_dependencies_and_say_so():
    known = modules()
    hidden = [f"{path}:{line}: {text.strip()}" for path in known.values()
              for name, line, inside, text in imports(path, known) if inside and "# deferred" not in text]
    assert not hidden, hidden


def test_the_checker_sees_an_upward_edge(tmp_path):
    """The layer map is not blind: checkpoint importing train is upward."""
    assert layer("neojax.train.loop") > layer("neojax.checkpoint.io") > layer("neojax.model.gpt_neo")
    assert layer("neojax.train.__main__") == len(LAYERS) - 1 and layer("neojax.evaluate.task") == 7
