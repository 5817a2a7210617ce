"""`evo export`: re-verify with the real evaluator (CPU interpreter), write with provenance,
update the library table, never replace a kernel that measured faster on the same device.
Writes into a temporary kernels directory, never the repository's."""
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from db.models import Candidate, Job, JobCandidate
from db.session import session_scope
from evo.export import ExportError, export_kernel, read_provenance, resolve_target
from evo.strategies.tune import set_tunables
from workers.protocol import HARNESS_VERSION, content_hash
from workers.sandbox import Evaluator

KERNELS = Path(__file__).resolve().parents[2] / "kernels"
SEED = (KERNELS / "softmax.py").read_text()
README = """# Kernel library

| Task | File | Provenance | GPU | vs eager | vs compile | vs seed | % SOL |
|---|---|---|---|---|---|---|---|
| `softmax` | `softmax.py` | seed | - | - | - | - | - |
| `rmsnorm` | `rmsnorm.py` | seed | - | - | - | - | - |
"""


@pytest.fixture(scope="module")
def evaluator():
    with Evaluator() as e:
        yield e


@pytest.fixture
def library(tmp_path):
    lib = tmp_path / "kernels"
    lib.mkdir()
    shutil.copy(KERNELS / "softmax.py", lib / "softmax.py")
    (lib / "README.md").write_text(README)
    return lib


def add_job_with_best(source: str) -> tuple[int, int]:
    with session_scope() as s:
        c = Candidate(task="softmax", language="triton", source=source, content_hash=content_hash(source, "softmax"),
                      harness_version=HARNESS_VERSION)
        job = Job(task="softmax", strategy="tune", budget=4, state="done", config={})
        s.add_all([c, job])
        s.flush()
        s.add(JobCandidate(job_id=job.id, candidate_id=c.id, generation=1, operator="tune", parent_ids=[]))
        job.best_candidate_id = c.id
        return job.id, c.id


def test_export_writes_verified_kernel_with_provenance(sqlite_db, library, evaluator):
    job_id, cid = add_job_with_best(set_tunables(SEED, {"NUM_WARPS": 4}))
    with session_scope() as s:
        assert resolve_target(s, str(job_id)) == (cid, job_id)
        assert resolve_target(s, f"c{cid}") == (cid, None)
        with pytest.raises(ExportError, match="no job 99"):
            resolve_target(s, "99")
        with pytest.raises(ExportError, match="expected a job id"):
            resolve_target(s, "best")

    result = export_kernel(cid, job_id=job_id, kernels_dir=library, force=True, evaluator=evaluator)
    written = result.path.read_text()
    p = read_provenance(result.path)
    assert (p["task"], p["job"], p["candidate"], p["strategy"], p["device"]) == ("softmax", job_id, cid, "tune",
                                                                                   "cpu-interpreter")
    assert p["runtime_ms"] > 0 and p["harness_version"] == HARNESS_VERSION
    assert written.startswith("# Evolved by evo: task softmax") and "NUM_WARPS = 4" in written
    row = [line for line in (library / "README.md").read_text().splitlines() if "`softmax`" in line][0]
    assert f"job {job_id}, candidate {cid} (tune, LLM none)" in row and "cpu-interpreter" in row
    assert "| `rmsnorm` | `rmsnorm.py` | seed |" in (library / "README.md").read_text()

    # The written module is a working kernel.
    spec = importlib.util.spec_from_file_location("exported_softmax", result.path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    x = torch.randn(3, 17)
    torch.testing.assert_close(module.entry(x), torch.softmax(x, dim=-1))


def test_export_keeps_a_faster_kernel_on_the_same_device(sqlite_db, library, evaluator):
    job_id, cid = add_job_with_best(set_tunables(SEED, {"NUM_WARPS": 2}))
    first = export_kernel(cid, job_id=job_id, kernels_dir=library, force=True, evaluator=evaluator)
    header, original = read_provenance(first.path), first.path.read_text()

    def rewrite_runtime(ms):  # pretend the kernel in the library measured `ms` on this device
        first.path.write_text(original.replace(json.dumps(header, sort_keys=True),
                                               json.dumps({**header, "runtime_ms": ms}, sort_keys=True)))
        assert read_provenance(first.path)["runtime_ms"] == ms

    rewrite_runtime(1e-9)
    before = first.path.read_text()
    with pytest.raises(ExportError, match="measured faster") as refused:
        export_kernel(cid, job_id=job_id, kernels_dir=library, evaluator=evaluator)
    assert refused.value.refused and first.path.read_text() == before

    rewrite_runtime(1e9)
    replaced = export_kernel(cid, job_id=job_id, kernels_dir=library, evaluator=evaluator)
    assert read_provenance(replaced.path)["runtime_ms"] < 1e9
    assert replaced.path.read_text().count("# evo-provenance:") == 1


def test_export_refuses_a_candidate_that_fails_reverification(sqlite_db, library, evaluator):
    wrong = SEED.replace("y = e / tl.sum(e, axis=0)", "y = e / (tl.sum(e, axis=0) + 1.0)")
    assert wrong != SEED
    job_id, cid = add_job_with_best(wrong)
    before = (library / "softmax.py").read_text()
    with pytest.raises(ExportError, match="failed re-verification on cpu-interpreter: incorrect"):
        export_kernel(cid, job_id=job_id, kernels_dir=library, evaluator=evaluator)
    assert (library / "softmax.py").read_text() == before
    assert (library / "README.md").read_text() == README
