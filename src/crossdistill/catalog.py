"""What the registry knows about the methods, as tables: ``crossdistill list methods`` and the methods
table of the README and docs/zoo.md are generated here from what each method file declares
(``paper``, ``year``, ``kind``, ``default_student`` / ``default_teacher``, ``default_weight``) and
from the built-in recipes that name it — never kept by hand in a second place.

The README and docs/zoo.md hold the generated table between the markers ``<!-- methods:begin -->``
and ``<!-- methods:end -->``; ``tests/test_catalog.py`` fails when it is stale. Regenerate with::

    python -m crossdistill.catalog README.md docs/zoo.md
"""
from __future__ import annotations

import re
import sys
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .config import RECIPES, list_configs, read_yaml
from .methods import METHODS, Method
from .methods.base import KINDS

BEGIN, END = "<!-- methods:begin -->", "<!-- methods:end -->"
REGENERATE = "python -m crossdistill.catalog README.md docs/zoo.md"


@lru_cache(maxsize=1)
def method_recipes() -> Dict[str, Tuple[str, ...]]:
    """Method name → the built-in recipes (``crossdistill list configs``) whose terms use it, read from
    the packaged YAML files (``base:`` included)."""
    found: Dict[str, List[str]] = defaultdict(list)
    for recipe in list_configs():
        terms = (read_yaml(RECIPES / f"{recipe}.yaml").get("distill") or {}).get("terms") or []
        for method in dict.fromkeys(t.get("method") for t in terms if isinstance(t, dict)):
            if method:
                found[method].append(recipe)
    return {m: tuple(r) for m, r in found.items()}


def summary(cls: type) -> str:
    """The method's one line: the first line of its class docstring (or else its file's), without the
    leading "Name — Authors year:" that repeats ``paper`` and ``year``."""
    doc = (cls.__dict__.get("__doc__") or sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
    line = doc[0].strip() if doc else ""
    m = re.match(r"^[^—:]{1,40}—[^:]{1,80}:\s*(.+)$", line)
    return m.group(1) if m else line


def _ordered(names: Sequence[str]) -> List[str]:
    """By kind (in :data:`KINDS` order, unknown kinds last), then year, then name."""
    def key(name):
        cls = METHODS.get(name)
        return (KINDS.index(cls.kind) if cls.kind in KINDS else len(KINDS), cls.year or 9999, name)

    return sorted(names, key=key)


def _sides(cls: type[Method]) -> str:
    def one(side) -> str:
        parts = [side] if isinstance(side, str) else list(side)
        return " + ".join(f"`{p}`" for p in parts) if parts else "—"

    s, t = one(cls.default_student), one(cls.default_teacher)
    if not cls.needs_teacher:
        return f"{s} (no teacher)"
    return s if s == t else f"{s} ← {t}"


def _recipe_globs(recipes: Sequence[str]) -> str:
    """``cifar100/resnet32x4_resnet8x4/kd`` and ``cifar100/wrn_40_2_wrn_16_2/kd`` → ``cifar100/*/kd``."""
    groups: Dict[Tuple, List[str]] = defaultdict(list)
    for r in recipes:
        parts = r.split("/")
        groups[(parts[0], parts[-1], len(parts)) if len(parts) > 2 else (r,)].append(r)
    shown = [g[0] if len(g) == 1 else "/".join([k[0], *["*"] * (k[2] - 2), k[1]]) for k, g in groups.items()]
    return ", ".join(f"`{s}`" for s in shown) or "—"


def method_rows(names: Optional[Sequence[str]] = None) -> List[Dict[str, str]]:
    """One dict per method (registry order: kind, year, name): what the tables show."""
    recipes = method_recipes()
    rows = []
    for name in _ordered(list(METHODS.names() if names is None else names)):
        cls = METHODS.get(name)
        rows.append({"name": name, "kind": cls.kind or "?", "year": str(cls.year or ""), "paper": cls.paper,
                     "summary": summary(cls), "sides": _sides(cls), "weight": f"{cls.default_weight:g}",
                     "recipes": _recipe_globs(recipes.get(name, ()))})
    return rows


def methods_table(names: Optional[Sequence[str]] = None) -> str:
    """The markdown table of the methods (README, docs/zoo.md): ``crossdistill list methods --markdown``."""
    lines = ["| method | kind | year | paper | default sides (student ← teacher) | β | built-in recipes |",
             "|---|---|---|---|---|---|---|"]
    for r in method_rows(names):
        lines.append(f"| `{r['name']}` | {r['kind']} | {r['year']} | {r['paper'].replace('|', '/')} | {r['sides']} "
                     f"| {r['weight']} | {r['recipes']} |")
    return "\n".join(lines) + "\n"


def methods_lines(names: Optional[Sequence[str]] = None) -> str:
    """The plain listing: name, kind, year, the one line and the authors (``crossdistill list methods``)."""
    def authors(paper: str) -> str:
        return f" ({paper.split(' — ')[0].rsplit(',', 1)[0].strip()})" if paper else ""  # "Authors, VENUE YEAR — …"

    return "\n".join(f"{r['name']:14s} {r['kind']:18s} {r['year']:4s}  {r['summary'].rstrip('.')}{authors(r['paper'])}"
                     for r in method_rows(names))


def builtin_names() -> List[str]:
    """The methods this package registers (not plugins, not methods a script registered)."""
    return [n for n, cls in METHODS.registered().items() if cls.__module__.startswith("crossdistill.methods.")]


def generated_block(table: Optional[str] = None) -> str:
    """The text between (and including) the markers: the table of the built-in methods."""
    return (f"{BEGIN}\n<!-- generated by `{REGENERATE}` from the methods' declarations; do not edit -->\n"
            f"{table if table is not None else methods_table(builtin_names())}{END}")


def committed_block(text: str) -> Optional[str]:
    """The marked block of a document, markers included (None if the document has none)."""
    m = re.search(re.escape(BEGIN) + r".*?" + re.escape(END), text, re.S)
    return m.group(0) if m else None


def update_document(path: str | Path, table: Optional[str] = None) -> bool:
    """Replace the marked block of ``path`` with the generated one; returns whether the file changed."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    old = committed_block(text)
    if old is None:
        raise ValueError(f"{p} has no '{BEGIN}' … '{END}' block")
    new = text.replace(old, generated_block(table))
    if new != text:
        p.write_text(new, encoding="utf-8")
    return new != text


def main(argv: Optional[Sequence[str]] = None) -> int:
    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths:
        print(methods_table(builtin_names()), end="")
        return 0
    for path in paths:
        print(f"{path}: {'updated' if update_document(path) else 'up to date'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
