"""The house rules (docs/architecture.md), read from the imports of every module with `ast`.

Each package has a layer; a module may import its own package and those of lower layers, never
one of its own layer or above. Every import counts: module level, inside functions, and under
`if TYPE_CHECKING:`. So verifier code (loader.report) never imports the boot; certs (but for its
CA, certs.ca) imports nothing of the project; attestation never imports the CA; and nothing under
attestation/ or certs/ imports loader.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOP = ("attestation", "certs", "loader")

# package -> layer; a module belongs to the longest package that prefixes its name.
LAYERS: dict[str, int] = {
    "certs": 0,  # X.509: chain validation, bounded JSON, the evidence extension, CSRs, self-issue
    "attestation": 1,  # evidence: attesters, verifiers, reference values
    "certs.ca": 2,  # the attestation-based CA: it appraises evidence
    "loader": 3,  # loader/__init__ (the version) alone: its subpackages are listed one by one
    "loader.errors": 3,  # the loader's exceptions and exit codes, shared by every wing
    "loader.systemd": 3,  # unit files (data)
    "loader.measure": 4,  # digests, OCI images, progress
    "loader.report": 5,  # what a verifier needs
    "loader.parties": 6,  # grants, sealing, chunked encryption, archives
    "loader.publish": 6,  # spool, ledger, sinks
    "loader.boot": 7,  # the in-CVM sequence
    "loader.cli": 8,  # the command line and the demo
    "loader.__main__": 9,  # python -m loader
}


@dataclass(frozen=True)
class Import:
    path: str
    line: int
    importer: str
    imported: str


def package_of(module: str) -> str | None:
    """The longest package of LAYERS that is `module` or contains it (`loader` contains only itself)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in LAYERS and (name != "loader" or module == "loader"):
            return name
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for top in TOP for p in sorted((REPO / top).rglob("*.py"))}


def imports_of(module: str, source: str, path: str, is_package: bool, known: set[str]) -> Iterator[Import]:
    """Every import of the project's packages in `source`, at any depth, relative ones resolved."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from loader import boot` imports the package loader.boot, not only loader
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            names = subs + ([target] if len(subs) < len(node.names) else [])
        else:
            continue
        for name in names:
            if name.split(".")[0] in TOP:
                yield Import(path, node.lineno, module, name)


def all_imports() -> list[Import]:
    modules = project_modules()
    known = set(modules)
    found = []
    for module, path in modules.items():
        rel = str(path.relative_to(REPO))
        found.extend(imports_of(module, path.read_text(), rel, path.name == "__init__.py", known))
    return found


def violations(imports: list[Import]) -> list[str]:
    """One line per import that reaches its own layer's neighbour or a layer above."""
    out = []
    for imp in imports:
        src, dst = package_of(imp.importer), package_of(imp.imported)
        if src is None or dst is None:
            unknown = imp.importer if src is None else imp.imported
            out.append(f"{imp.path}:{imp.line}: {unknown} is in no package of LAYERS (add it there)")
        elif src != dst and LAYERS[dst] >= LAYERS[src]:
            out.append(
                f"{imp.path}:{imp.line}: {imp.importer} imports {imp.imported}: {src} (layer {LAYERS[src]}) "
                f"may import only packages below it, and {dst} is layer {LAYERS[dst]}"
            )
    return out


def package_cycles(imports: list[Import]) -> list[list[str]]:
    """Cycles in the graph of imports between different packages."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        src, dst = package_of(imp.importer), package_of(imp.imported)
        if src and dst and src != dst:
            graph.setdefault(src, set()).add(dst)
    cycles, done = [], set()

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            cycles.append([*stack[stack.index(node) :], node])
            return
        if node in done:
            return
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, [*stack, node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])
    return cycles


IMPORTS = all_imports()


def test_every_module_is_in_a_layer() -> None:
    lost = [m for m in project_modules() if package_of(m) is None]
    assert not lost, f"modules in no package of LAYERS: {lost}"


def test_no_package_imports_its_own_layer_or_above() -> None:
    found = violations(IMPORTS)
    assert not found, "import rules broken (docs/architecture.md):\n" + "\n".join(found)


def test_no_import_cycle_between_packages() -> None:
    cycles = package_cycles(IMPORTS)
    assert not cycles, "import cycles between packages: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_verifier_reads_nothing_of_the_boot_nor_the_command_line() -> None:
    reached = {package_of(i.imported) for i in IMPORTS if package_of(i.importer) == "loader.report"}
    below = {"loader.report", "loader.measure", "loader", "loader.errors", "attestation", "certs", "certs.ca"}
    assert reached <= below, reached


def test_the_libraries_never_import_the_loader() -> None:
    back = [
        i for i in IMPORTS if i.importer.split(".")[0] != "loader" and i.imported.split(".")[0] == "loader"
    ]
    assert not back, [f"{i.path}:{i.line} imports {i.imported}" for i in back]


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        (
            "loader.report.verify",
            "def f():\n    from loader.boot import config\n",
            "and loader.boot is layer 7",
        ),
        (
            "loader.report.verify",
            "if TYPE_CHECKING:\n    import loader.cli.commands\n",
            "imports loader.cli.commands",
        ),
        ("loader.report.verify", "from ..boot import sequence\n", "imports loader.boot.sequence"),
        ("certs.chain", "from attestation import binding\n", "and attestation is layer 1"),
        ("attestation.tdx.verifier", "import certs.ca.authority\n", "and certs.ca is layer 2"),
        ("loader.parties.seal", "from loader.publish import spool\n", "and loader.publish is layer 6"),
        ("certs.ca.authority", "from loader import errors\n", "and loader.errors is layer 3"),
        ("loader.wing.new", "import loader.errors\n", "is in no package of LAYERS"),
    ],
)
def test_the_rules_catch_a_forbidden_import(module: str, source: str, expected: str) -> None:
    """The checker itself: each forbidden import, wherever it hides, is named with its file and line."""
    found = violations(list(imports_of(module, source, "probe.py", False, set(project_modules()))))
    assert len(found) == 1 and expected in found[0] and found[0].startswith("probe.py:"), found


def test_a_cycle_between_packages_is_named() -> None:
    probe = [
        Import("a.py", 1, "loader.parties.x", "loader.publish.y"),
        Import("b.py", 1, "loader.publish.y", "loader.parties.x"),
    ]
    assert package_cycles(probe) == [["loader.parties", "loader.publish", "loader.parties"]]
