"""What every part of the wheel tools shares: the source root, logging, running commands, the
failure type of the checks, and setup.py's own functions (loaded, never duplicated)."""

from __future__ import annotations

import ast
import functools
import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def log(message: str) -> None:
    print(f"[build_wheels] {message}", flush=True)


class CheckFailed(RuntimeError):
    """A built wheel is wrong (post-build checks, smoke test); the message lists what."""


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    log("$ " + " ".join(cmd))
    return subprocess.run(cmd, check=True, **kwargs)


def version_tuple(version: str) -> tuple[int, int]:
    """``"2.14.1+cu130"`` -> ``(2, 14)``."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if not match:
        raise ValueError(f"cannot read a version from {version!r}")
    return int(match.group(1)), int(match.group(2))


def setup_py_functions(*names: str) -> list:
    """Functions defined in setup.py (its imports and defs only: the build itself is not run)."""
    namespace = _setup_py_namespace()
    return [namespace[name] for name in names]


@functools.lru_cache(maxsize=None)
def _setup_py_namespace() -> dict:
    path = os.path.join(ROOT, "setup.py")
    with open(path) as handle:
        tree = ast.parse(handle.read(), path)
    body = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    body += [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    for node in tree.body:  # the constants above the first function (ROOT, ...)
        if isinstance(node, ast.FunctionDef):
            break
        if isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) and t.id.isupper() for t in node.targets):
            body.append(node)
    namespace: dict = {"__file__": path}
    exec(compile(ast.Module(body=body, type_ignores=[]), path, "exec"), namespace)
    return namespace


def local_version_tag(torch_version: str, cuda_version: str | None) -> str:
    """setup.py's label for a build (defined in vqvae_fast/_extension.py, loaded by path)."""
    (load,) = setup_py_functions("load_extension_module")
    return load().local_version_tag(torch_version, cuda_version)
