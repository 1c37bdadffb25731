"""Every file type is parsed, embedded, stored and found with no network at all, in a fresh process.

A fresh process, because what unstructured, spaCy, sentence-transformers and Chroma try to reach
happens at import and first use; with the telemetry switches unset, to show the service sets them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Installed as sitecustomize, so that it holds in every Python process the test starts: uploads are parsed in
# child processes of multiprocessing's fork server (documents/sandbox.py), which the script's own patches
# would not reach. Every attempt is appended to the file named by OFFLINE_ATTEMPTS.
BLOCKER = textwrap.dedent(
    """
    import os, socket, subprocess

    def _note(what, args):
        with open(os.environ["OFFLINE_ATTEMPTS"], "a") as log:
            log.write(f"{os.getpid()} {what} {repr(args)[:120]}\\n")

    def _refuse(what, real=None):
        def blocked(*args, **kwargs):
            # A Unix socket is not the network: the fork server is reached through one.
            if real is not None and args and getattr(args[0], "family", None) == socket.AF_UNIX:
                return real(*args, **kwargs)
            _note(what, args)
            raise OSError(f"network disabled in this test ({what})")
        return blocked

    socket.socket.connect = _refuse("connect", socket.socket.connect)
    socket.socket.connect_ex = _refuse("connect_ex", socket.socket.connect_ex)
    socket.create_connection = _refuse("create_connection")
    socket.getaddrinfo = _refuse("getaddrinfo")
    _real_popen = subprocess.Popen.__init__
    def _popen(self, args, *rest, **kwargs):
        _note("subprocess", args)
        return _real_popen(self, args, *rest, **kwargs)
    subprocess.Popen.__init__ = _popen
    """
)

SCRIPT = textwrap.dedent(
    """
    import asyncio, os, tempfile
    from pathlib import Path

    from inference_api.documents import ChromaStore, DocumentService, Embedder
    from tests.documents.samples import QUERY, sample

    async def main():
        service = DocumentService(ChromaStore.open(data_dir=Path(tempfile.mkdtemp())), Embedder.load("cpu"))
        for file_type in ["pdf", "txt", "docx", "html", "htm", "md", "csv", "eml"]:
            result = await service.ingest(file_type, *sample(file_type))
            hits = await service.search(file_type, QUERY, k=1)
            assert hits[0].document_id == result.document_id and "4471" in hits[0].text, file_type
        service.close()

    if __name__ == "__main__":
        asyncio.run(main())
        attempts = Path(os.environ["OFFLINE_ATTEMPTS"]).read_text()
        assert not attempts, attempts
        print("offline ok")
    """
)


def test_everything_works_with_no_network(tmp_path: Path) -> None:
    unset = {"DO_NOT_TRACK", "SCARF_NO_ANALYTICS", "ANONYMIZED_TELEMETRY", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"}
    env = {k: v for k, v in os.environ.items() if k not in unset}
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    (tmp_path / "offline_check.py").write_text(SCRIPT)
    (tmp_path / "attempts.log").write_text("")
    env["OFFLINE_ATTEMPTS"] = str(tmp_path / "attempts.log")
    paths = [str(tmp_path), str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    done = subprocess.run(
        [sys.executable, str(tmp_path / "offline_check.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "offline ok" in done.stdout
