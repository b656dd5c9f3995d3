"""The C++ API on its own: programs that link libfastpage, with no Python in them, run a model.

Compiles examples/cpp_embedding/main.cpp and tests/cpp/test_engine_api.cpp against the headers and
the libfastpage that `import fastpage` loaded (the installed wheel, or a developer build).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch.utils import cpp_extension

import fastpage

ROOT = Path(__file__).resolve().parents[1]


def loaded_library(name: str) -> Path:
    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split()[-1]
        if Path(path).name == name:
            return Path(path)
    raise AssertionError(f"{name} is not loaded")


def include_dir() -> Path:
    installed = Path(fastpage.__file__).parent / "include"
    return installed if installed.is_dir() else ROOT / "cpp" / "include"


def compile_program(source: Path, output: Path) -> None:
    lib_dir = loaded_library("libfastpage.so").parent
    torch_lib = cpp_extension.library_paths()[0]
    command = [
        shutil.which("c++") or "g++", "-std=c++20", "-O1", str(source), "-o", str(output),
        f"-I{include_dir()}", f"-I{ROOT / 'examples' / 'cpp_embedding'}",
        *(f"-I{p}" for p in cpp_extension.include_paths()),
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        f"-L{lib_dir}", "-lfastpage", f"-L{torch_lib}", "-ltorch", "-ltorch_cpu", "-lc10",
        f"-Wl,-rpath,{lib_dir}:{torch_lib}",
    ]
    subprocess.run(command, check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def programs(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("cpp")
    built = {}
    for name, source in [("example", ROOT / "examples" / "cpp_embedding" / "main.cpp"),
                         ("engine_api", ROOT / "tests" / "cpp" / "test_engine_api.cpp")]:
        built[name] = out / name
        compile_program(source, built[name])
    return built


def test_engine_api_checks_pass(programs):
    result = subprocess.run([programs["engine_api"]], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "engine_api: ok" in result.stdout


def test_embedding_example_finishes_every_request(programs):
    result = subprocess.run([programs["example"]], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for request in ("a", "b"):
        tokens = [line for line in lines if line.startswith(f"{request}: ")]
        assert len(tokens) == 8  # max_tokens
        assert tokens[-1].endswith("(done)")
