"""Generates tollgate/_pb (messages, gRPC stubs and .pyi type stubs) from the one
tollgate.proto at build time, so generated code is never committed or hand-edited.

The proto is read from the repository (../../proto/tollgate.proto); an sdist carries a copy
(proto/tollgate.proto beside this file), written by the sdist command below.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
PROTO_IN_REPO = HERE.parent.parent / "proto" / "tollgate.proto"
PROTO_IN_SDIST = HERE / "proto" / "tollgate.proto"


def proto_source() -> Path:
    for candidate in (PROTO_IN_REPO, PROTO_IN_SDIST):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"tollgate.proto not found at {PROTO_IN_REPO} (repository) or {PROTO_IN_SDIST} (sdist)"
    )


def generate(out_dir: Path) -> None:
    """Runs protoc so the modules import each other as tollgate._pb.*: the proto is placed
    at tollgate/_pb/tollgate.proto under a temporary include root."""
    from grpc_tools import protoc  # a build requirement, see pyproject.toml

    with tempfile.TemporaryDirectory() as include_root:
        placed = Path(include_root) / "tollgate" / "_pb" / "tollgate.proto"
        placed.parent.mkdir(parents=True)
        shutil.copyfile(proto_source(), placed)
        out_dir.mkdir(parents=True, exist_ok=True)
        well_known = Path(protoc.__file__).parent / "_proto"
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{include_root}",
                f"-I{well_known}",
                f"--python_out={out_dir}",
                f"--pyi_out={out_dir}",
                f"--grpc_python_out={out_dir}",
                str(placed),
            ]
        )
        if code != 0:
            raise RuntimeError(f"protoc failed with exit code {code}")


class BuildPyWithProto(build_py):
    def run(self) -> None:
        super().run()
        generate(Path(self.build_lib))


class SdistWithProto(sdist):
    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        target = Path(base_dir) / "proto" / "tollgate.proto"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(proto_source(), target)


setup(cmdclass={"build_py": BuildPyWithProto, "sdist": SdistWithProto})
