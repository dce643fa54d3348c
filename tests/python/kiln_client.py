#!/usr/bin/env python3
"""Kiln interoperability client: proves a non-Rust gRPC client can drive a Kiln server.

It generates the kiln.v1 stubs from proto/ at run time (grpc_tools.protoc into a temporary
directory), uploads a directory as an uncompressed tar with its files at the archive root
(UploadSource), starts a build with an inline project (StartBuild), prints the log as it comes
(StreamLogs, follow), reads the final build (GetBuild) and prints `STATUS <name>`.

Exit status: 0 when the build SUCCEEDED; 1 when it did not, or on a server error; 2 when the
server refused the input (INVALID_ARGUMENT) or the arguments are wrong.

    pip install -r tests/python/requirements.txt
    python3 tests/python/kiln_client.py --server 127.0.0.1:7420 [--token T] DIR
    python3 tests/python/kiln_client.py --check   # only generate and import the stubs
"""

import argparse
import importlib
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROTOS = ["kiln/v1/build.proto", "kiln/v1/worker.proto", "kiln/v1/state.proto"]
# UploadSource takes `data` chunks of at most 1 MiB.
CHUNK = 1 << 20


def load_stubs(out_dir):
    """Generates the Python stubs for kiln.v1 into out_dir and imports them."""
    command = [
        sys.executable, "-m", "grpc_tools.protoc", "-I", str(REPO / "proto"),
        f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", *PROTOS,
    ]
    generated = subprocess.run(command, capture_output=True, text=True)
    if generated.returncode != 0:
        sys.exit(f"kiln_client: generating the stubs failed:\n{generated.stderr}")
    sys.path.insert(0, str(out_dir))
    pb2 = importlib.import_module("kiln.v1.build_pb2")
    pb2_grpc = importlib.import_module("kiln.v1.build_pb2_grpc")
    # Imported only to prove every proto file compiles and loads.
    importlib.import_module("kiln.v1.state_pb2")
    return pb2, pb2_grpc


def project_name(directory):
    """The inline project's name: the directory's name, as `kiln run` and `kiln start` name it."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", Path(directory).resolve().name).lstrip("-_")
    return name[:255] if len(name) >= 2 else "local"


def archive(directory, spool):
    """Writes directory into spool as a tar with the files at its root; links stay links."""
    with tarfile.open(fileobj=spool, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(os.listdir(directory)):
            tar.add(os.path.join(directory, name), arcname=name, recursive=True)
    size = spool.tell()
    spool.seek(0)
    return size


def upload_requests(pb2, spool, size):
    yield pb2.UploadSourceRequest(begin=pb2.UploadBegin(size=size))
    while True:
        data = spool.read(CHUNK)
        if not data:
            return
        yield pb2.UploadSourceRequest(data=data)


def run(args, pb2, pb2_grpc):
    import grpc

    metadata = [("authorization", f"Bearer {args.token}")] if args.token else []
    with grpc.insecure_channel(args.server) as channel:
        stub = pb2_grpc.BuildServiceStub(channel)
        with tempfile.TemporaryFile() as spool:
            size = archive(args.dir, spool)
            uploaded = stub.UploadSource(
                upload_requests(pb2, spool, size), metadata=metadata, timeout=600
            )
        print(f"uploaded {size} bytes as {uploaded.digest}", file=sys.stderr)
        project = pb2.Project(
            name=args.project or project_name(args.dir),
            source=pb2.ProjectSource(type="NO_SOURCE"),
        )
        request = pb2.StartBuildRequest(
            inline_project=project,
            source_digest=uploaded.digest,
            initiator="kiln-python-client",
        )
        if args.buildspec:
            request.buildspec_override = Path(args.buildspec).read_text()
        build = stub.StartBuild(request, metadata=metadata, timeout=60).build
        print(f"build {build.id} {build.build_status}", file=sys.stderr)
        logs = stub.StreamLogs(
            pb2.StreamLogsRequest(id=build.id, from_seq=0, follow=True),
            metadata=metadata,
            timeout=args.deadline,
        )
        for chunk in logs:
            sys.stdout.buffer.write(chunk.data)
            sys.stdout.buffer.flush()
        build = stub.GetBuild(pb2.GetBuildRequest(id=build.id), metadata=metadata, timeout=60)
        print(f"STATUS {build.build_status}")
        return 0 if build.build_status == "SUCCEEDED" else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dir", nargs="?", help="the directory to upload and build")
    parser.add_argument("--server", default="127.0.0.1:7420", help="host:port of the server")
    parser.add_argument("--token", default=os.environ.get("KILN_TOKEN", ""), help="bearer token")
    parser.add_argument("--project", help="inline project name (default: the directory's)")
    parser.add_argument("--buildspec", help="a buildspec file whose text overrides buildspec.yml")
    parser.add_argument("--deadline", type=float, default=3600.0,
                        help="seconds to wait for the build's log to end")
    parser.add_argument("--check", action="store_true",
                        help="only generate and import the stubs, then exit")
    args = parser.parse_args()
    if not args.check and (args.dir is None or not os.path.isdir(args.dir)):
        parser.error("name the directory to build")

    import grpc

    with tempfile.TemporaryDirectory(prefix="kiln-stubs-") as out:
        pb2, pb2_grpc = load_stubs(out)
        if args.check:
            methods = pb2.DESCRIPTOR.services_by_name["BuildService"].methods
            print(f"stubs OK: BuildService with {len(methods)} methods, grpcio {grpc.__version__}")
            return 0
        try:
            return run(args, pb2, pb2_grpc)
        except grpc.RpcError as error:
            print(f"kiln_client: {error.code().name}: {error.details()}", file=sys.stderr)
            return 2 if error.code() == grpc.StatusCode.INVALID_ARGUMENT else 1


if __name__ == "__main__":
    sys.exit(main())
