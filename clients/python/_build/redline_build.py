"""A PEP 517 build backend for this pure-Python package, standard library only.

Why not setuptools: pip builds in an isolated environment and would fetch the backend from an
index, so `pip install ./clients/python` would fail offline. This backend reads the few fields it
needs from pyproject.toml (Python 3.11's tomllib, or a minimal reader on 3.10) and writes a wheel
(or an sdist) of `src/redline_client`.
"""

import base64
import hashlib
import io
import os
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "redline_client"


def _project():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        return _read_project_table(text)
    return tomllib.loads(text)["project"]


def _read_project_table(text):
    """The `[project]` tables of this package's pyproject.toml on Python 3.10, which has no
    tomllib: each value there is a one-line string or list of strings (no inline comments)."""
    import ast

    project, table = {}, None
    for line in (raw.strip() for raw in text.splitlines()):
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            table = line.strip("[]")
            continue
        if not table.startswith("project"):
            continue
        key, _, value = (part.strip() for part in line.partition("="))
        sub = table.removeprefix("project").lstrip(".")
        target = project.setdefault(sub, {}) if sub else project
        target[key.strip('"')] = ast.literal_eval(value)
    return project


def _dist_name(project):
    return project["name"].replace("-", "_")


def _metadata(project):
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {project['name']}",
        f"Version: {project['version']}",
        f"Summary: {project.get('description', '')}",
        f"Requires-Python: {project.get('requires-python', '>=3')}",
    ]
    for dep in project.get("dependencies", []):
        lines.append(f"Requires-Dist: {dep}")
    for extra, deps in project.get("optional-dependencies", {}).items():
        lines.append(f"Provides-Extra: {extra}")
        lines.extend(f'Requires-Dist: {dep}; extra == "{extra}"' for dep in deps)
    return "\n".join(lines) + "\n"


def _files():
    src = ROOT / "src" / PACKAGE
    for path in sorted(src.rglob("*.py")):
        yield path.relative_to(ROOT / "src").as_posix(), path.read_bytes()


def _record_line(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _write_wheel(wheel_directory, files, project):
    dist = _dist_name(project)
    version = project["version"]
    info = f"{dist}-{version}.dist-info"
    entry = "[console_scripts]\n" + "".join(
        f"{name} = {target}\n" for name, target in project.get("scripts", {}).items()
    )
    files = list(files) + [
        (f"{info}/METADATA", _metadata(project).encode()),
        (f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: redline_build\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
        (f"{info}/entry_points.txt", entry.encode()),
    ]
    record = [_record_line(name, data) for name, data in files] + [f"{info}/RECORD,,"]
    files.append((f"{info}/RECORD", ("\n".join(record) + "\n").encode()))
    name = f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w", zipfile.ZIP_DEFLATED) as whl:
        for path, data in files:
            whl.writestr(zipfile.ZipInfo(path, date_time=(2026, 1, 1, 0, 0, 0)), data)
    return name


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    return _write_wheel(wheel_directory, _files(), _project())


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    # A .pth file that puts src/ on the path: edits take effect without reinstalling.
    pth = (str(ROOT / "src") + "\n").encode()
    return _write_wheel(wheel_directory, [(f"__editable__.{PACKAGE}.pth", pth)], _project())


def get_requires_for_build_wheel(config_settings=None):
    return []


get_requires_for_build_editable = get_requires_for_build_sdist = get_requires_for_build_wheel


def build_sdist(sdist_directory, config_settings=None):
    project = _project()
    base = f"{_dist_name(project)}-{project['version']}"
    name = f"{base}.tar.gz"
    with tarfile.open(os.path.join(sdist_directory, name), "w:gz") as tar:
        for rel in ["pyproject.toml", "_build/redline_build.py", *(f"src/{p}" for p, _ in _files())]:
            tar.add(ROOT / rel, arcname=f"{base}/{rel}")
        pkg_info = _metadata(project).encode()
        member = tarfile.TarInfo(f"{base}/PKG-INFO")
        member.size = len(pkg_info)
        tar.addfile(member, io.BytesIO(pkg_info))
    return name
