"""The project's modules import one another without a circle (README, Layout: imports only go down)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def project_imports() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its file (top level or inside a function)."""
    modules = {p.stem: p for p in ROOT.glob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                deps.add(node.module.split(".")[0])
        graph[name] = (deps & modules.keys()) - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A list of modules that import each other in a circle, or None (depth-first search)."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                return stack[stack.index(d):] + [d]
            if d not in state and (c := visit(d)):
                return c
        state[m] = "done"
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_no_import_circle():
    """Catches: an import that closes a circle, such as meta_baselines' bench importing experiment (which
    imports meta_baselines) for setup_torch, even inside a function."""
    graph = project_imports()
    assert {"experiment", "meta_baselines", "trust_region", "fisher", "diffusion"} <= graph.keys()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    assert "meta_baselines" in graph["experiment"]              # the scaffold builds the learners
    assert find_cycle({**graph, "meta_baselines": graph["meta_baselines"] | {"experiment"}}) is not None
