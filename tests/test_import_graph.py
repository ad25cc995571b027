"""The layering of src/cvserve, read from the source with `ast`: no import circles, and no
layer reaching up into one that sits above it (models -> zoo/http/jobs/render, the SDK ->
the server).

Every import counts, at module level or inside a function (a lazy import is still a
dependency) or under TYPE_CHECKING. A layer rule checks what a module reaches through
cvserve modules, not only what it names, so a rule cannot be dodged through a helper.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "cvserve"


@cache
def modules() -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package)."""
    found: dict[str, tuple[Path, bool]] = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        found[".".join(parts)] = (path, is_package)
    return found


def _owner(name: str) -> str | None:
    """The cvserve module that defines `name` (a module, or a name inside one)."""
    mods = modules()
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _imported(module: str) -> Iterator[str]:
    """Every absolute name `module` imports: `a.b` for `import a.b`, and for
    `from a import b` the submodule `a.b` when there is one, else `a`."""
    path, is_package = modules()[module]
    here = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield sub if sub in modules() else base


@cache
def graph() -> dict[str, frozenset[str]]:
    """cvserve module -> the cvserve modules it imports."""
    edges: dict[str, frozenset[str]] = {}
    for module in modules():
        targets = {_owner(name) for name in _imported(module) if name.split(".")[0] == PACKAGE}
        # The top package's __init__ loads its children lazily (cvserve.Client), and they
        # import __version__ from it: that parent -> child edge is no circle. Any other
        # package's __init__ re-exporting a child counts, since the child's own imports
        # can come back through it (runtime -> backends -> choose -> ... -> runtime).
        edges[module] = frozenset(
            t
            for t in targets
            if t and t != module and not (module == PACKAGE and t.startswith(module + "."))
        )
    return edges


def external(module: str) -> set[str]:
    """Top-level names of the non-cvserve packages `module` imports."""
    return {n.split(".")[0] for n in _imported(module) if n.split(".")[0] != PACKAGE}


def find_cycle() -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (depth-first search, colours)."""
    g = graph()
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(g[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(g):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


def in_layer(module: str, layer: str) -> bool:
    return module == layer or module.startswith(layer + ".")


def reach(module: str, stop: tuple[str, ...]) -> dict[str, list[str]]:
    """Every cvserve module `module` reaches through imports -> one import chain to it,
    not looking past modules of the `stop` layers (the first forbidden step is the news)."""
    g = graph()
    chains = {module: [module]}
    todo = [module]
    while todo:
        here = todo.pop()
        if here != module and any(in_layer(here, s) for s in stop):
            continue
        for nxt in sorted(g[here]):
            if nxt not in chains:
                chains[nxt] = [*chains[here], nxt]
                todo.append(nxt)
    return chains


def violations(layer: str, forbidden: tuple[str, ...], packages: tuple[str, ...] = ()) -> list[str]:
    """'a -> b -> c' for each way a module of `layer` reaches a forbidden layer or package."""
    found = []
    for module in sorted(m for m in graph() if in_layer(m, layer)):
        for target, chain in reach(module, forbidden).items():
            if any(in_layer(target, f) for f in forbidden):
                found.append(" -> ".join(chain))
            elif names := sorted(external(target) & set(packages)):
                found += [" -> ".join([*chain, name]) for name in names]
    return sorted(set(found))


def test_the_graph_sees_the_package() -> None:
    g = graph()
    assert {"cvserve.models.store", "cvserve.zoo.base", "cvserve.http.app"} <= set(g)
    assert "cvserve.models.base" in g["cvserve.models.store"]
    assert (
        "cvserve.models.registry" in g["cvserve.models.store"]
    )  # `from cvserve.models import registry`


def test_no_import_cycles() -> None:
    cycle = find_cycle()
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


SERVER = ("cvserve.models", "cvserve.http")
RULES = [
    pytest.param(
        "cvserve.models",
        ("cvserve.zoo", "cvserve.http", "cvserve.jobs", "cvserve.render", "cvserve.tools"),
        (),
        id="models-imports-no-zoo-http-jobs-render-tools",
    ),
    pytest.param(
        "cvserve.render",
        ("cvserve.models",),
        (),
        id="render-imports-no-models",
    ),
    pytest.param("cvserve.engine", ("cvserve.http",), (), id="engine-imports-no-http"),
    # Offline tools (quantize) stay out of the serving path.
    *(
        pytest.param(door, ("cvserve.tools",), (), id=f"{door.split('.')[1]}-imports-no-tools")
        for door in ("cvserve.http", "cvserve.engine", "cvserve.jobs")
    ),
    pytest.param(
        "cvserve.client",
        SERVER,
        ("onnxruntime",),
        id="sdk-client-imports-no-server",
    ),
    pytest.param("cvserve.wire", SERVER, ("onnxruntime",), id="wire-imports-no-server"),
]


@pytest.mark.parametrize(("layer", "forbidden", "packages"), RULES)
def test_layer_imports_nothing_above_it(
    layer: str, forbidden: tuple[str, ...], packages: tuple[str, ...]
) -> None:
    if not any(in_layer(m, layer) for m in graph()):
        pytest.skip(f"{layer} does not exist yet")
    bad = violations(layer, forbidden, packages)
    assert not bad, f"{layer} reaches what it must not:\n  " + "\n  ".join(bad)


@pytest.mark.parametrize("word", ["/api/", "context/vision", "route"])
def test_model_code_names_no_http_route(word: str) -> None:
    """Models know no door: what a route is called is the HTTP layer's business."""
    hits = [
        f"{path.relative_to(SRC)}:{n}"
        for path in sorted((SRC / PACKAGE / "models").rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if word in line.lower()
    ]
    assert not hits, f"{word!r} in model code: " + ", ".join(hits)


def test_only_the_ray_package_imports_ray() -> None:
    """Single-machine cvserve never imports Ray: the plain install stays lean."""
    direct = sorted(m for m in graph() if "ray" in external(m) and not in_layer(m, "cvserve.ray"))
    assert not direct, direct
    for layer in ("cvserve.http", "cvserve.engine", "cvserve.models", "cvserve.jobs"):
        assert not violations(layer, ("cvserve.ray",), ("ray",)), layer


def test_only_the_postgres_store_imports_psycopg() -> None:
    users = sorted(m for m in graph() if "psycopg" in external(m))
    assert users and all(m.startswith("cvserve.jobs.p") for m in users), users


def _attribute_uses(layer: str, name: str) -> list[str]:
    """`x.name` anywhere in the layer's modules, as file:line."""
    hits = []
    for module, (path, _) in sorted(modules().items()):
        if not in_layer(module, layer):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr == name:
                hits.append(f"{path.relative_to(SRC)}:{node.lineno}")
    return hits


def test_doors_reach_models_only_through_the_engine_contract() -> None:
    """http/ asks the engine (EngineAPI), never the model store: under Ray the ingress's
    store holds nothing, so a door reading it would describe an empty server."""
    direct = sorted(
        f"{m} imports {name}"
        for m in graph()
        if in_layer(m, "cvserve.http")
        for name in _imported(m)
        if _owner(name) in ("cvserve.models.store", "cvserve.engine.residency")
    )
    assert not direct, direct
    for attr in ("store", "residency", "admission", "lanes"):
        assert not _attribute_uses("cvserve.http", attr), (
            attr,
            _attribute_uses("cvserve.http", attr),
        )


def test_the_engine_imports_no_wire_format() -> None:
    """The engine returns typed results; a door picks the wire encoder."""
    assert not violations("cvserve.engine", ("cvserve.wire",), ()), violations(
        "cvserve.engine", ("cvserve.wire",), ()
    )


def test_call_state_travels_as_an_argument() -> None:
    """A call's deadline, cancellation and scheduling hint reach the session runs as a
    RunContext argument, and a composite gets its parts through an explicit resolver: no
    thread-local carries request state in the engine or the models (the store's own load
    bookkeeping, `models/store.py`, is not request state)."""
    found = [
        f"{path.relative_to(SRC)}:{n}"
        for layer in ("engine", "models")
        for path in sorted((SRC / PACKAGE / layer).rglob("*.py"))
        if path.name != "store.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "threading.local(" in line
    ]
    assert not found, found
