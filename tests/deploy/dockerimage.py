"""What a Dockerfile's image holds, read from the files: no Docker engine runs in CI.

`image_files` follows the instructions that place files (WORKDIR, COPY from the build context or
from an earlier stage, RUN grpc_tools.protoc, RUN apt-get install) and tells, for each path of the
final stage, where it comes from; the build context is filtered as BuildKit filters it (the
Dockerfile's own `<name>.dockerignore`, else the context's `.dockerignore`). Enough for this
repository's Dockerfiles, not a builder: what else a RUN does, or what the base image holds, is not
modelled.
"""

from __future__ import annotations

import posixpath
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

# Where an image file comes from: ("context", path in the build context), ("protoc", the .proto's
# path in the build context) or ("apt", Debian package).
Origin = tuple[str, str]


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def env(self) -> dict[str, str]:
        values = {}
        for op, args in self.instructions:
            if op == "ENV":
                values.update(pair.split("=", 1) for pair in shlex.split(args))
        return values


def stages(dockerfile: Path) -> list[Stage]:
    """The build stages, each with its instructions (continuation lines joined, comments out)."""
    found: list[Stage] = []
    logical, pending = [], ""
    for line in dockerfile.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    for line in logical:
        op, _, args = line.strip().partition(" ")
        op, args = op.upper(), args.strip()
        if op == "FROM":
            base, *rest = args.split()
            found.append(Stage(base, rest[1] if len(rest) == 2 and rest[0].upper() == "AS"
                               else None))
        elif found:  # an ARG before the first FROM only parameterises FROM lines
            found[-1].instructions.append((op, args))
    return found


def dockerignore(dockerfile: Path, context: Path) -> list[str]:
    own = dockerfile.with_name(dockerfile.name + ".dockerignore")
    path = own if own.is_file() else context / ".dockerignore"
    if not path.is_file():
        return []
    return [line.strip() for line in path.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def _pattern(text: str) -> re.Pattern:
    out, i = "", 0
    while i < len(text):
        if text.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif text.startswith("**", i):
            out, i = out + ".*", i + 2
        elif text[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif text[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(text[i]), i + 1
    return re.compile(out)


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path, or a folder above it, decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _pattern(posixpath.normpath(pattern.lstrip("!").strip("/")))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def image_files(dockerfile: Path, context: Path) -> tuple[dict[str, Origin], Stage]:
    """The final stage's files (image path -> origin) and the stage itself."""
    patterns = dockerignore(dockerfile, context)
    built: dict[str, dict[str, Origin]] = {}
    files: dict[str, Origin] = {}
    for index, stage in enumerate(stages(dockerfile)):
        files, workdir = {}, "/"
        for op, args in stage.instructions:
            if op == "WORKDIR":
                workdir = posixpath.join(workdir, args)
            elif op == "COPY":
                files.update(_copy(args, workdir, context, patterns, built))
            elif op == "RUN":
                files.update(_protoc(args, workdir, files))
                files.update(_apt(args))
        built[stage.name or str(index)] = files
    return files, stage


def _copy(args: str, workdir: str, context: Path, patterns: list[str],
          built: dict[str, dict[str, Origin]]) -> dict[str, Origin]:
    tokens = shlex.split(args)
    flags = dict(t[2:].split("=", 1) for t in tokens if t.startswith("--") and "=" in t)
    *sources, dest = [t for t in tokens if not t.startswith("--")]
    dest = posixpath.join(workdir, dest)
    into_folder = dest.endswith("/") or len(sources) > 1
    copied: dict[str, Origin] = {}
    for source in sources:
        if "from" in flags:  # another stage's files, by absolute path
            stage_files = built[flags["from"]]
            top = posixpath.normpath(posixpath.join("/", source))
            items = {path: origin for path, origin in stage_files.items()
                     if path == top or path.startswith(top + "/")}
        else:
            top = posixpath.normpath(source)
            tree = context / top
            paths = [tree] if tree.is_file() else [p for p in tree.rglob("*") if p.is_file()]
            items = {}
            for path in paths:
                relative = path.relative_to(context).as_posix()
                if not ignored(relative, patterns):
                    items[relative] = ("context", relative)
        for path, origin in items.items():
            inside = posixpath.relpath(path, top)
            if inside == ".":  # a file copied by name
                target = posixpath.join(dest, posixpath.basename(path)) if into_folder else dest
            else:
                target = posixpath.join(dest, inside)
            copied[posixpath.normpath(target)] = origin
    return copied


def _segment(command: str, word: str) -> list[str] | None:
    for part in command.split("&&"):
        if word in part:
            return shlex.split(part)
    return None


def _protoc(args: str, workdir: str, files: dict[str, Origin]) -> dict[str, Origin]:
    tokens = _segment(args, "grpc_tools.protoc")
    if not tokens:
        return {}
    includes = [t[2:].split("=", 1) for t in tokens if t.startswith("-I") and "=" in t]
    outputs = {t.split("=", 1)[0]: t.split("=", 1)[1] for t in tokens if t.startswith("--")}
    suffixes = {"--python_out": "_pb2.py", "--grpc_python_out": "_pb2_grpc.py",
                "--pyi_out": "_pb2.pyi"}
    generated: dict[str, Origin] = {}
    for proto in (t for t in tokens if t.endswith(".proto")):
        origin = files.get(posixpath.join(workdir, proto))
        if origin is None:  # protoc would fail: the .proto is not in the stage
            continue
        for virtual, real in includes:
            if proto.startswith(real.rstrip("/") + "/"):
                module = posixpath.join(virtual, posixpath.relpath(proto, real))[:-len(".proto")]
                for flag, suffix in suffixes.items():
                    if flag in outputs:
                        path = posixpath.join(workdir, outputs[flag], module + suffix)
                        generated[posixpath.normpath(path)] = ("protoc", origin[1])
    return generated


def _apt(args: str) -> dict[str, Origin]:
    """Files of the Debian packages a RUN installs, as this machine's dpkg lists them (the same
    packages the Makefile installs here)."""
    tokens = _segment(args, "apt-get install")
    if not tokens:
        return {}
    packages = [t for t in tokens[tokens.index("install") + 1:] if not t.startswith("-")]
    files: dict[str, Origin] = {}
    for package in packages:
        listed = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True)
        assert listed.returncode == 0, f"{package} is not installed here: run `make apt-deps`"
        files.update({path: ("apt", package) for path in listed.stdout.splitlines()
                      if Path(path).is_file()})
    return files
