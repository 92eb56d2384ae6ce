"""The project's modules import one another without a circle, each on its floor (README, Layout: imports only go
down). A module's floor is 0 if it imports no project module, else 1 + the highest floor it imports."""
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


def floors(graph: dict[str, set[str]]) -> dict[str, int]:
    """module -> its floor (the graph must have no circle)."""
    out = {}

    def floor(m):
        if m not in out:
            out[m] = 1 + max((floor(d) for d in graph[m]), default=-1)
        return out[m]

    for m in graph:
        floor(m)
    return out


# the library's floors; the scripts (train_*.py, bench.py, derivation.py, ...) stand on top of them
FLOORS = {"diffusion": 0, "unet": 0, "fid_networks": 0, "runfiles": 0,
          "fisher": 1, "replay": 1, "cw10_data": 1, "figures": 1, "image_data": 1, "fid": 1,
          "trust_region": 2, "cw10_paths": 2, "metrics": 2, "meta_baselines": 3, "learners": 4, "experiment": 5}
PAPER = ("diffusion", "unet", "fisher", "replay", "trust_region", "meta_baselines")  # the paper's math


def test_no_import_circle():
    """Catches: an import that closes a circle, such as learners importing experiment (which imports learners) for
    a helper, even inside a function."""
    graph = project_imports()
    assert set(FLOORS) <= graph.keys()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    assert "learners" in graph["experiment"]              # the scaffold builds the learners
    assert find_cycle({**graph, "learners": graph["learners"] | {"experiment"}}) is not None


def test_floors_and_imports_only_go_down():
    """Each library module stands on its floor; cw10_data imports nothing above the ground floor; the paper's
    modules import only one another; no module imports a script except the training scripts' use of bench.py.
    Catches: cw10_data importing experiment for an error helper (which would lift the environment side above the
    whole learning stack), a paper module importing the run-folder code, a module importing a training script."""
    graph = project_imports()
    floor = floors(graph)
    assert {m: floor[m] for m in FLOORS} == FLOORS
    assert all(floor[d] == 0 for d in graph["cw10_data"]), graph["cw10_data"]
    for m in PAPER:
        assert graph[m] <= set(PAPER), (m, graph[m] - set(PAPER))
    scripts = set(graph) - set(FLOORS)
    for m, deps in graph.items():
        assert not deps & scripts - {"bench"} and ("bench" not in deps or m.startswith("train_")), (m, deps & scripts)


def test_readme_layout_names_every_module_on_its_floor():
    """The README's Layout table lists every module of the repository once, a library module on the floor it
    stands on here, a script on a floor above the library's ("6+" or "top"). Catches: a module added without a
    line in the README (the guide asks each extra module for a reason there), a floor changed by a new import
    while the README keeps the old one."""
    rows = [line.split("|")[1:3] for line in (ROOT / "README.md").read_text().splitlines()
            if line.startswith("| ") and "`" in line.split("|")[2] and line.split("|")[1].strip() in
            {*map(str, range(10)), "6+", "top"}]
    listed = {}
    for cell, files in rows:
        for name in files.replace("`", "").replace(",", " ").split():
            assert name.endswith(".py") and name[:-3] not in listed, name
            listed[name[:-3]] = cell.strip()
    assert set(listed) == set(project_imports()), set(listed) ^ set(project_imports())
    assert {m: int(c) for m, c in listed.items() if c.isdigit()} == FLOORS
