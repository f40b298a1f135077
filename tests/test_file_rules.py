"""The two file rules (`lpa_core.files`: reading; `lpa_core.atomic` and `open_new`: writing) are the only
way in or out (issue 41). This test reads lpa's own source and fails on any call that reads or writes a
file outside `lpa_core` (builtin ``open``, ``Path.read_*``/``write_*``/``open``, ``np.load``,
``h5py.File``, safetensors' ``safe_open``/``load_file``/``save_file``, ``shutil`` copies, ``json.load``,
``os.open``/``fdopen``, ``Image.open``, ``np.memmap``) unless

- its path went through a rule in the same function (``readable(...)``, ``regular_file(...)``,
  ``open_new(...)``, or assigned from one of them), or is the temporary name ``atomic_path`` gave it; or
- `ALLOWED` names the place (file, function, call) and says why it is safe.

A place the test finds that `ALLOWED` does not name is the next missed opener; an `ALLOWED` entry that no
longer matches anything is stale and fails too, so the list stays the list of real exceptions.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("lpa_cli", "analyzers")
IO_CALLS = {"open", "read_text", "read_bytes", "write_text", "write_bytes", "load", "loadtxt", "File", "safe_open", "copyfile", "copy",
            "copy2", "copytree", "move", "load_file", "save_file", "fdopen", "memmap", "fromfile", "tofile", "savez", "save", "is_hdf5"}
MODULE_ONLY = {"load": {"np", "numpy", "json", "torch", "pickle"}, "save": {"np", "numpy", "torch"}, "copy": {"shutil"}, "move": {"shutil"}}
RULES = {"readable", "regular_file", "open_new"}  # a path that went through one of these is under the rules
OWN = ("lpa_core", "lpa_cli", "analyzers")  # a bare call of a function imported from here is lpa's own wrapper, scanned where it is defined

ALLOWED: dict[tuple[str, str, str], str] = {
    ("lpa_cli/data/files.py", "_load_npz", "open"): "load_task passes only paths regular_file accepted (tasks.py); sniffs 4 bytes",
    ("lpa_cli/data/files.py", "_load_npz", "load"): "the same path, after the zip signature check; allow_pickle=False",
    ("lpa_cli/data/files.py", "_load_npy", "load"): "is_file() just before (a FIFO is not a file); mmap, allow_pickle=False",
    ("lpa_cli/data/files.py", "_load_csv", "open"): "load_task passes only paths regular_file accepted; _check_size bounds it first",
    ("lpa_cli/data/files.py", "_load_csv", "loadtxt"): "the same path as the csv.reader above it",
    ("lpa_cli/data/folders.py", "_image", "open"): "files listed from the image folder, is_file() checked when listed; Pillow's "
                                                   "decompression-bomb limit applies",
    ("lpa_cli/data/folders.py", "_verify", "open"): "the same listed files, header only",
    ("lpa_cli/data/splits.py", "__getitem__", "memmap"): "a token or array file the task loader already checked (regular_file)",
    ("lpa_cli/data/text.py", "builtin_corpus", "read_bytes"): "lpa's own package data (importlib.resources), not a user's file",
    ("lpa_cli/formats/checkpoint.py", "save_file", "open"): "its callers pass the temporary name of atomic_path",
    ("lpa_cli/integrations/hf_model.py", "lpa_model", "read_bytes"): "tokenizer_files() returns only files readable(inside=) "
                                                                          "accepted (their folder, or a hub cache snapshot)",
    ("lpa_cli/models/hf/directory.py", "read_weights", "safe_open"): "weights_files() returns the model files through readable(inside=)",
    ("lpa_cli/models/hf/directory.py", "weights_sha256", "open"): "each globbed file through _inside(), i.e. readable(inside=)",
    ("lpa_cli/training/snapshot.py", "load_snapshot", "safe_open"): "readable(path) on the line before",
    ("lpa_cli/training/snapshot.py", "load_snapshot", "load_file"): "readable(path) before the safe_open above",
    ("lpa_cli/workflows/inspect.py", "describe", "load_file"): "read_info(path) read the header through readable first",
    ("analyzers/trace/arrays.py", "_open", "File"): "a trace the reader opened first (Trace.__init__: readable)",
    ("analyzers/trace/writer.py", "__init__", "File"): "the writer's own .partial, created under output_lock, never through a link",
    ("analyzers/trace/writer.py", "_try_resume", "File"): "the same .partial, refuse_link checked",
    ("analyzers/trace/sync.py", "__init__", "open"): "os.open O_RDONLY of the writer's own .partial, to fsync it",
}


def _callee(node: ast.Call) -> str | None:
    f = node.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def _own_imports(tree: ast.Module) -> set[str]:
    return {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and (n.module or "").startswith(OWN) for a in n.names}


def _ruled_in(func: ast.AST) -> set[str]:
    """Source text of the expressions a function put under a rule: assigned from a rule's call, or
    bound by ``with atomic_path(...) as NAME``."""
    out = set()
    for n in ast.walk(func):
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Call) and _callee(n.value) in RULES:
            out |= {ast.unparse(t) for t in n.targets}
        if isinstance(n, (ast.With, ast.AsyncWith)):
            for item in n.items:
                if isinstance(item.context_expr, ast.Call) and _callee(item.context_expr) == "atomic_path" and item.optional_vars is not None:
                    out.add(ast.unparse(item.optional_vars))
    return out


def _under_rule(node: ast.Call, ruled: set[str]) -> bool:
    f = node.func
    operands = ([f.value] if isinstance(f, ast.Attribute) else []) + list(node.args)
    for e in operands:
        if isinstance(e, ast.Call) and _callee(e) in RULES:
            return True  # readable(p).read_text(), os.fdopen(open_new(...))
        if any(ast.unparse(sub) in ruled for sub in ast.walk(e) if isinstance(sub, (ast.Name, ast.Attribute))):
            return True
    return False


def file_calls() -> list[tuple[str, str, str, int]]:
    """(file, function, call, line) of every file read or write outside lpa_core not under a rule."""
    found = []
    for root in SCANNED:
        for path in sorted((ROOT / root).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            own = _own_imports(tree) | {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}  # and its own functions
            funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
            innermost = {}
            for fn in funcs:  # the innermost function holding each call (walked outer to inner)
                for n in ast.walk(fn):
                    innermost[n] = fn
            for node in ast.walk(tree):
                name = _callee(node) if isinstance(node, ast.Call) else None
                if name not in IO_CALLS:
                    continue
                f = node.func
                module = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else None
                if name in MODULE_ONLY and module not in MODULE_ONLY[name]:
                    continue  # tensor.to/.copy, dict.copy: not files
                if isinstance(f, ast.Name) and name in own:
                    continue  # lpa's own wrapper (write_text of lpa_core.atomic, read_text of lpa_cli.data.text)
                fn = innermost.get(node)
                if fn is not None and _under_rule(node, _ruled_in(fn)):
                    continue
                found.append((path.relative_to(ROOT).as_posix(), fn.name if fn else "<module>", name, node.lineno))
    return found


def test_every_file_lpa_reads_or_writes_goes_through_the_rules_or_is_listed_with_a_reason():
    found = file_calls()
    unlisted = [f"{file}:{line} {func}() calls {call}" for file, func, call, line in found if (file, func, call) not in ALLOWED]
    assert not unlisted, "file access outside the rules (route it through lpa_core.files / lpa_core.atomic, or add it to ALLOWED " \
                         "with the reason it is safe):\n" + "\n".join(unlisted)
    stale = sorted(set(ALLOWED) - {(file, func, call) for file, func, call, _ in found})
    assert not stale, f"ALLOWED entries that match nothing any more (remove them): {stale}"


def test_the_scanner_finds_a_planted_reader(tmp_path, monkeypatch):
    """The check is not vacuous: a module that reads a path directly is found, one that goes through
    readable() is not."""
    pkg = tmp_path / "lpa_cli"
    pkg.mkdir()
    (pkg / "bad.py").write_text("from pathlib import Path\n\ndef f(p):\n    return Path(p).read_text()\n")
    (pkg / "good.py").write_text("from lpa_core.files import readable\n\ndef g(p):\n    p = readable(p)\n    return p.read_text()\n\n"
                                 "def h(p):\n    return readable(p).read_bytes()\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", tmp_path)
    monkeypatch.setattr(__import__(__name__, fromlist=["SCANNED"]), "SCANNED", ("lpa_cli",))
    assert [(f, fn, c) for f, fn, c, _ in file_calls()] == [("lpa_cli/bad.py", "f", "read_text")]
