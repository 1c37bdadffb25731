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

SCRIPT = textwrap.dedent(
    """
    import asyncio, socket, subprocess, sys, tempfile
    from pathlib import Path

    attempts = []

    def refuse(what):
        def blocked(*args, **kwargs):
            attempts.append((what, repr(args)[:120]))
            raise OSError(f"network disabled in this test ({what})")
        return blocked

    socket.socket.connect = refuse("connect")
    socket.socket.connect_ex = refuse("connect_ex")
    socket.create_connection = refuse("create_connection")
    socket.getaddrinfo = refuse("getaddrinfo")
    real_popen = subprocess.Popen.__init__
    def popen(self, args, *rest, **kwargs):
        attempts.append(("subprocess", repr(args)[:120]))
        return real_popen(self, args, *rest, **kwargs)
    subprocess.Popen.__init__ = popen

    from inference_api.documents import ChromaStore, DocumentService, Embedder
    from tests.documents.samples import QUERY, sample

    async def main():
        service = DocumentService(ChromaStore.open(data_dir=Path(tempfile.mkdtemp())), Embedder.load("cpu"))
        for file_type in ["pdf", "txt", "docx", "html", "htm", "md", "csv", "eml"]:
            result = await service.ingest(file_type, *sample(file_type))
            hits = await service.search(file_type, QUERY, k=1)
            assert hits[0].document_id == result.document_id and "4471" in hits[0].text, file_type
        service.close()

    asyncio.run(main())
    assert not attempts, attempts
    print("offline ok")
    """
)


def test_everything_works_with_no_network() -> None:
    unset = {"DO_NOT_TRACK", "SCARF_NO_ANALYTICS", "ANONYMIZED_TELEMETRY", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"}
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "offline ok" in done.stdout
