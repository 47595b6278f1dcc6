"""The deployment files, validated offline: Docker's engine does not run in CI.

Compose against the Compose Specification's schema, Prometheus config and rules with promtool
(rule unit tests included), the Dockerfiles with hadolint, Grafana provisioning by structure, and
the compose Locust image against every import its locustfile reaches (tests/deploy/dockerimage.py
reads what the image holds from its Dockerfile).
"""

from __future__ import annotations

import ast
import json
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from dockerimage import image_files

ROOT = Path(__file__).resolve().parents[2]
# Lives beside the repository, in CI as well as here (see ../shared/schemas/README.md).
COMPOSE_SCHEMA = ROOT / "../shared/schemas/compose-spec.json"
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = ROOT / "deploy/prometheus"
GRAFANA = ROOT / "deploy/grafana"
DOCKERFILES = [ROOT / "Dockerfile", ROOT / "loadtest/Dockerfile"]


def tool(name: str) -> str:
    """A command-line tool from the venv (pip-installed) or the system (apt-installed)."""
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert path, f"{name} not found: run `make install-dev apt-deps`"
    return path


def run(*command, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


# -- docker-compose.yml ---------------------------------------------------------------------------

def test_compose_matches_the_compose_specification():
    assert COMPOSE_SCHEMA.is_file(), f"{COMPOSE_SCHEMA} is missing"
    result = run(tool("check-jsonschema"), "--schemafile", str(COMPOSE_SCHEMA), str(COMPOSE))
    assert result.returncode == 0, result.stdout + result.stderr


def _bind_sources(service: dict) -> list[str]:
    sources = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                sources.append(source)
        elif volume.get("type") == "bind":
            sources.append(volume["source"])
    return sources


def test_every_file_compose_mounts_or_builds_exists(compose):
    checked = 0
    for name, service in compose["services"].items():
        for source in _bind_sources(service):
            assert (ROOT / source).exists(), f"service {name} mounts {source}, which is missing"
            checked += 1
        build = service.get("build")
        if build:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            assert context.is_dir(), f"service {name}: build context {context} is missing"
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile",
                                                                               "Dockerfile")
            assert (context / dockerfile).is_file(), f"service {name}: {dockerfile} is missing"
        for env_file in service.get("env_file", []):
            assert (ROOT / env_file).is_file(), f"service {name}: env_file {env_file} is missing"
    assert checked >= 6


def test_compose_services_are_hardened_and_gpu_is_a_profile(compose):
    services = compose["services"]
    assert {"onnx-serve", "onnx-serve-gpu", "prometheus", "grafana", "locust-master",
            "locust-worker"} <= set(services)
    cpu, gpu = services["onnx-serve"], services["onnx-serve-gpu"]
    assert "profiles" not in cpu and cpu["environment"]["ONNXSERVE_DEVICE"] == "cpu"
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["driver"] == "nvidia"
    for service in (cpu, gpu):
        # Every port the server opens by default is published: REST, gRPC and metrics.
        assert {int(port.split(":")[-1]) for port in service["ports"]} == set(_default_ports())
        assert service["read_only"] is True
        assert not str(service["user"]).startswith(("0", "root"))
        assert any(entry.startswith("/tmp") for entry in service["tmpfs"])
        assert service["cap_drop"] == ["ALL"]
        assert "onnx-serve" in service["networks"]["default"]["aliases"]
    # Prometheus sees the folder its config refers to its rules from.
    assert "./deploy/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert services["locust-worker"]["deploy"]["replicas"] >= 2
    assert "--master" in services["locust-master"]["command"]


def _default_ports() -> list[int]:
    from service.settings import ServerSettings

    fields = ServerSettings.model_fields
    return [fields[f"{name}_port"].default for name in ("http", "grpc", "metrics")]


# -- Prometheus -----------------------------------------------------------------------------------

def test_promtool_check_config():
    result = run(tool("promtool"), "check", "config", "prometheus.yml", cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_promtool_check_rules():
    result = run(tool("promtool"), "check", "rules", *map(str, PROMETHEUS.glob("rules/*.yml")))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests():
    tests = sorted(PROMETHEUS.glob("tests/*_test.yml"))
    assert tests
    result = run(tool("promtool"), "test", "rules", *map(str, tests), cwd=PROMETHEUS / "tests")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alert_rules_cover_the_four_conditions():
    groups = yaml.safe_load((PROMETHEUS / "rules/onnx-serve.yml").read_text())["groups"]
    alerts = {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}
    assert {"InferenceLatencySLOBreach", "InferenceErrorRatioHigh", "InferenceQueueNearFull",
            "InferenceModelNotReady"} <= alerts
    tested = (PROMETHEUS / "tests/onnx-serve_test.yml").read_text()
    for alert in alerts:
        assert f"alertname: {alert}" in tested, f"alert {alert} has no promtool unit test"


# -- Grafana --------------------------------------------------------------------------------------

def test_grafana_provisioning_points_at_the_dashboard(compose):
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    source = datasources["datasources"][0]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/onnx-serve.yml").read_text())
    path = providers["providers"][0]["options"]["path"]
    mounts = {v.split(":")[1]: v.split(":")[0]
              for v in compose["services"]["grafana"]["volumes"] if v.startswith("./")}
    assert (ROOT / mounts[path] / "onnx-serve.json").is_file()


def test_dashboard_has_the_panels_ops_asked_for():
    dashboard = json.loads((GRAFANA / "dashboards/onnx-serve.json").read_text())
    titles = " | ".join(panel["title"].lower() for panel in dashboard["panels"])
    for words in ("request rate by model and code", "errors", "p50 / p95 / p99",
                  "queue wait vs compute", "batch size distribution", "in-flight",
                  "queue depth", "execution provider"):
        assert words in titles, f"no panel about {words!r}: {titles}"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"


# -- Dockerfiles ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint(dockerfile):
    result = run(tool("hadolint"), "--no-color", str(dockerfile))
    assert result.returncode == 0, result.stdout + result.stderr


def test_service_image_compiles_every_proto():
    """The server imports every generated module (grpc_service imports model_config; the task
    API has its own), so the image's protoc run must name every .proto."""
    from dockerimage import stages

    (build,) = [stage for stage in stages(ROOT / "Dockerfile") if stage.name == "build"]
    (protoc,) = [args for op, args in build.instructions if op == "RUN" and "protoc" in args]
    compiled = {token for token in shlex.split(protoc) if token.endswith(".proto")}
    assert compiled == {p.relative_to(ROOT).as_posix() for p in (ROOT / "protos").glob("*.proto")}


def _third_party_imports(package: Path) -> set[str]:
    found = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                found.add(node.module.split(".")[0])
    return {name for name in found
            if name not in sys.stdlib_module_names and name not in ("__future__", "service")}


def test_the_image_installs_every_service_package_and_its_imports():
    """`pip install .` (the image's install) takes the packages setuptools finds, which skip a
    folder without __init__.py, and the dependencies outside any extra: each must cover what the
    server's code imports."""
    from importlib.metadata import packages_distributions, requires

    from setuptools import find_packages

    folders = {path.parent.relative_to(ROOT).as_posix().replace("/", ".")
               for path in (ROOT / "service").rglob("*.py") if "__pycache__" not in path.parts}
    left_out = folders - set(find_packages(str(ROOT), include=["service*"]))
    assert not left_out, f"not installed (no __init__.py?): {sorted(left_out)}"
    runtime = {canonicalize_name(r.name) for r in map(Requirement, requires("onnx-serve"))
               if "extra" not in str(r.marker)}
    distributions = packages_distributions()
    # uvicorn loads its HTTP parser by the name service/http/server.py gives it, not an import.
    modules = _third_party_imports(ROOT / "service") | {"httptools"}
    missing = {name for name in modules
               if not {canonicalize_name(d) for d in distributions.get(name, [])} & runtime}
    assert not missing, f"imported by service/ but not a runtime dependency: {sorted(missing)}"


def test_service_image_shape():
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M)
    assert len(stages) >= 2, "multi-stage build expected"
    assert re.search(r"CUDA_IMAGE=nvidia/cuda:13\.[\d.]+-cudnn-runtime-ubuntu24\.04", text)
    assert "grpc_tools.protoc -Iservice/_proto=protos" in text
    runtime = text[text.rindex("\nFROM "):]
    assert re.search(r"^USER\s+10001", runtime, re.M)
    assert "HEALTHCHECK" in runtime and "grpc_health" in runtime
    assert '["serve", "--models", "/models"]' in runtime
    assert "torch" not in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ignored[ignored.index("*") + 1:] and "!service/" in ignored and "!protos/" in ignored


# -- the compose Locust image ---------------------------------------------------------------------

def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module, whether it must exist) for every import of a file, in functions and fallbacks
    too; `from M import n` names M, and M.n where n is a submodule (`from service._proto import
    task_service_pb2`) rather than a name M defines."""
    modules = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules += [(alias.name, True) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative imports are not followed here"
            modules += [(node.module, True)]
            modules += [(f"{node.module}.{alias.name}", False) for alias in node.names]
    return modules


def _find(module: str, roots: list[str], exists) -> str | None:
    relative = module.replace(".", "/")
    for root in roots:
        for candidate in (f"{root}/{relative}.py", f"{root}/{relative}/__init__.py"):
            if exists(candidate):
                return candidate
    return None


@cache
def _modules_of(distribution: str) -> frozenset[str]:
    """The dotted names of a distribution's modules and packages."""
    from importlib.metadata import files

    modules = set()
    for file in files(distribution) or []:
        if file.suffix in (".py", ".so"):
            parts = file.with_suffix("").as_posix().split("/")
            parts[-1] = parts[-1].split(".")[0]  # name.cpython-311-x86_64-linux-gnu.so
            modules.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return frozenset(modules)


@cache
def _distributions_by_top_level() -> dict[str, list[str]]:
    from importlib.metadata import packages_distributions

    return packages_distributions()


def _distribution(module: str) -> str | None:
    """The installed distribution that holds `module` (several share `google`, for one)."""
    candidates = _distributions_by_top_level().get(module.split(".")[0], [])
    return next((canonicalize_name(name) for name in candidates if module in _modules_of(name)),
                None)


def _dependency_closure(name: str) -> set[str]:
    from importlib.metadata import distribution

    closure, todo = set(), [name]
    while todo:
        current = canonicalize_name(todo.pop())
        if current in closure:
            continue
        closure.add(current)
        for line in distribution(current).requires or []:
            requirement = Requirement(line)
            if not requirement.marker or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return closure


def _pins() -> dict[str, Requirement]:
    """pyproject.toml's pins, extras included, as the installed project's metadata has them."""
    from importlib.metadata import requires

    return {canonicalize_name(r.name): r for r in map(Requirement, requires("onnx-serve"))}


def locust_image_problems(compose: dict, dockerfile: Path, context: Path) -> list[str]:
    """What the compose Locust image lacks for the locustfile's imports: every module from the
    repository the locustfile reaches (and the packages above each) at its import path in the
    image, from that same file or generated from its proto; every other module from a
    distribution the image's requirements name or its base image's Locust depends on; and the
    Fashion-MNIST test images `--payload real` reads."""
    from loadtest.payloads import DEBIAN_FASHION_MNIST

    files, final = image_files(dockerfile, context)
    commands = {name: compose["services"][name]["command"].split()
                for name in ("locust-master", "locust-worker")}
    locustfiles = {command[command.index("-f") + 1] for command in commands.values()}
    assert len(locustfiles) == 1, f"master and workers run different files: {locustfiles}"
    (locustfile,) = locustfiles
    if files.get(locustfile) != ("context", "loadtest/locustfile.py"):
        return [f"{locustfile} (compose's -f) is not loadtest/locustfile.py in the image"]
    # Locust puts the locustfile's folder first on sys.path; PYTHONPATH follows.
    image_roots = [posixpath.dirname(locustfile)] + [
        p for p in final.env().get("PYTHONPATH", "").split(":") if p]
    local_roots = [str(ROOT / "loadtest"), str(ROOT)]

    pins = _pins()
    base, _, tag = final.base.partition(":")
    assert base == "locustio/locust" and pins["locust"].specifier == SpecifierSet(f"=={tag}")
    provided = _dependency_closure("locust")  # locally installed at the image's version
    problems, requirements = [], {}
    for op, args in final.instructions:
        if op == "RUN" and "pip install" in args:
            path = shlex.split(args)[shlex.split(args).index("-r") + 1]
            origin = files.get(path)
            assert origin and origin[0] == "context", f"{path} is not from the build context"
            for line in (context / origin[1]).read_text().splitlines():
                if line.split("#")[0].strip():
                    requirement = Requirement(line.split("#")[0])
                    requirements[canonicalize_name(requirement.name)] = requirement
    problems += [f"{requirement} in the image, {pins.get(name)} in pyproject.toml"
                 for name, requirement in requirements.items()
                 if name not in pins or requirement.specifier != pins[name].specifier]

    seen = set()
    todo = [(name, required, "loadtest/locustfile.py")
            for name, required in _imports(ROOT / "loadtest/locustfile.py")]
    while todo:
        module, required, importer = todo.pop()
        parts = module.split(".")
        if parts[0] in sys.stdlib_module_names or parts[0] == "__future__" or module in seen:
            continue
        local = _find(module, local_roots, lambda p: Path(p).is_file())
        if local is None:
            distribution = _distribution(module)
            if distribution is None:
                if required:
                    problems.append(f"{module} (imported by {importer}) is not installed here")
            elif distribution not in requirements.keys() | provided:
                problems.append(f"{module} (imported by {importer}): {distribution} is neither "
                                f"in the image's requirements nor a dependency of locust")
            seen.add(module)
            continue
        seen.add(module)
        todo += [(".".join(parts[:n]), True, importer) for n in range(1, len(parts))]
        image = _find(module, image_roots, files.__contains__)
        relative = Path(local).relative_to(ROOT).as_posix()
        proto = f"protos/{Path(local).name.split('_pb2')[0]}.proto"
        if image is None:
            problems.append(f"{module} (imported by {importer}) is not in the image")
        elif files[image] not in (("context", relative), ("protoc", proto)):
            problems.append(f"{image} in the image is {files[image]}, not {relative}")
        else:
            todo += [(name, required, relative) for name, required in _imports(Path(local))]
    images = (DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").as_posix()
    if files.get(images) != ("apt", "dataset-fashion-mnist"):
        problems.append(f"{images} (--payload real) is not in the image")
    return problems


def _locust_build(compose: dict) -> tuple[Path, Path]:
    master, worker = compose["services"]["locust-master"], compose["services"]["locust-worker"]
    assert worker["image"] == master["image"] and "build" not in worker
    assert not master.get("volumes") and not worker.get("volumes")  # the image's files run
    context = ROOT / master["build"]["context"]
    return context / master["build"]["dockerfile"], context


def test_compose_locust_image_holds_everything_the_locustfile_imports(compose):
    assert (ROOT / "service/_proto/task_service_pb2.py").is_file(), "run `make proto`"
    dockerfile, context = _locust_build(compose)
    assert locust_image_problems(compose, dockerfile, context) == []


@pytest.mark.parametrize("line, problem", [
    ("COPY service/client/ service/client/",
     "service.client (imported by loadtest/payloads.py) is not in the image"),
    ("COPY --from=build /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz "
     "/usr/share/datasets/fashion-mnist/",
     "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz (--payload real) is not in "
     "the image"),
    ("ENV PYTHONPATH=/opt/onnx-serve",
     "service._proto.task_service_pb2 (imported by loadtest/payloads.py) is not in the image"),
])
def test_locust_image_check_finds_what_a_dockerfile_leaves_out(compose, tmp_path, line, problem):
    dockerfile, context = _locust_build(compose)
    text = re.sub(r"\\\n\s*", "", dockerfile.read_text())  # one line per instruction
    assert line in text
    broken = tmp_path / dockerfile.name
    broken.write_text(text.replace(line, ""))
    shutil.copy(dockerfile.with_name(dockerfile.name + ".dockerignore"), tmp_path)
    assert problem in locust_image_problems(compose, broken, context)
