"""Write-back: re-verify a winning candidate on this machine's device and put it into kernels/.

The written module starts with a provenance header: readable comment lines plus one JSON
line (`# evo-provenance: {...}`) holding the measured numbers, so a later export can compare
itself with what is there. An existing kernel that measured faster on the same device is
never replaced (unless forced); a kernel without a header is the seed, and the candidate's
re-measured speedup over the seed decides. The library's table in kernels/README.md gets
the new numbers in the task's row.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Candidate, Job, JobCandidate
from db.session import session_scope

KERNELS_DIR = Path(__file__).resolve().parents[1] / "kernels"
PROVENANCE_PREFIX = "# evo-provenance: "
_HEADER_LINE = re.compile(r"^# (evo-provenance: .*|Evolved by evo: .*|  .*)$")


class ExportError(Exception):
    """`refused` is True when a faster kernel is kept or the candidate failed re-verification."""

    def __init__(self, message: str, refused: bool = False):
        super().__init__(message)
        self.refused = refused


@dataclass
class ExportResult:
    path: Path
    provenance: dict

    @property
    def summary(self) -> str:
        p = self.provenance
        return (f"{p['device']}: {p['runtime_ms']:.4g} ms, x{p['speedup_eager'] or 0:.2f} vs eager, "
                f"x{p['speedup_seed'] or 0:.2f} vs seed")


def resolve_target(session: Session, target: str) -> tuple[int, int | None]:
    """'12' or 'job:12' -> (job 12's best candidate, 12); 'c7' or 'candidate:7' -> (7, None)."""
    m = re.fullmatch(r"(?:(job:)|(c|candidate:))?(\d+)", target.strip())
    if not m:
        raise ExportError(f"expected a job id (12, job:12) or a candidate id (c7, candidate:7), got {target!r}")
    number = int(m[3])
    if m[2]:
        if session.get(Candidate, number) is None:
            raise ExportError(f"no candidate {number}")
        return number, None
    job = session.get(Job, number)
    if job is None:
        raise ExportError(f"no job {number}")
    if job.best_candidate_id is None:
        raise ExportError(f"job {number} has no correct candidate to export (state {job.state})")
    return job.best_candidate_id, number


def read_provenance(path: Path) -> dict | None:
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        if line.startswith(PROVENANCE_PREFIX):
            return json.loads(line[len(PROVENANCE_PREFIX):])
        if not line.startswith("#"):
            return None
    return None


def strip_provenance(source: str) -> str:
    """The source without a leading provenance header (candidates evolved from an exported kernel carry one)."""
    lines = source.splitlines(keepends=True)
    i = 0
    while i < len(lines) and _HEADER_LINE.match(lines[i].rstrip("\n")):
        i += 1
    if not any(line.startswith(PROVENANCE_PREFIX) for line in lines[:i]):
        return source
    return "".join(lines[i:])


def render_header(p: dict) -> str:
    sol = "-" if p["sol_fraction"] is None else f"{100 * p['sol_fraction']:.0f}%"

    def x(v):
        return "-" if v is None else f"x{v:.2f}"

    return (f"# Evolved by evo: task {p['task']}, job {p['job']}, candidate {p['candidate']}, "
            f"strategy {p['strategy']}, LLM {p['llm'] or 'none'}\n"
            f"#   re-verified on {p['device']} ({p['date']}): {p['runtime_ms']:.4g} ms, {x(p['speedup_eager'])} vs eager, "
            f"{x(p['speedup_compile'])} vs torch.compile, {x(p['speedup_seed'])} vs seed, {sol} of speed-of-light\n"
            f"{PROVENANCE_PREFIX}{json.dumps(p, sort_keys=True)}\n")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def export_kernel(candidate_id: int, job_id: int | None = None, kernels_dir: Path | None = None,
                  force: bool = False, evaluator=None) -> ExportResult:
    kernels_dir = kernels_dir or KERNELS_DIR
    with session_scope() as s:
        cand = s.get(Candidate, candidate_id)
        if cand is None:
            raise ExportError(f"no candidate {candidate_id}")
        origin = s.execute(select(JobCandidate, Job).join(Job, Job.id == JobCandidate.job_id)
                           .where(JobCandidate.candidate_id == candidate_id,
                                  *([JobCandidate.job_id == job_id] if job_id is not None else []))
                           .order_by(JobCandidate.id).limit(1)).first()
        task, language, source = cand.task, cand.language, strip_provenance(cand.source)
        jc, job = origin if origin else (None, None)
        job_fields = {"job": job.id if job else None, "strategy": job.strategy if job else None,
                      "llm": job.llm_model if job else None, "operator": jc.operator if jc else None,
                      "generation": jc.generation if jc else None}

    result = _reverify(task, source, language, evaluator)
    if result.status != "correct":
        raise ExportError(f"candidate {candidate_id} failed re-verification on {result.device}: "
                          f"{result.status}: {(result.error or '').strip().splitlines()[0] if result.error else ''}",
                          refused=True)
    provenance = {"task": task, "candidate": candidate_id, **job_fields, "language": language,
                  "device": result.device, "runtime_ms": result.runtime_ms, "speedup_eager": result.speedup_eager,
                  "speedup_compile": result.speedup_compile, "speedup_seed": result.speedup_seed,
                  "sol_fraction": result.sol_fraction, "harness_version": result.harness_version,
                  "environment": result.environment,
                  "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}

    path = kernels_dir / (f"{task}.py" if language == "triton" else f"{task}_cuda.py")
    if not force:
        _refuse_if_slower(path, provenance)
    _atomic_write(path, render_header(provenance) + source)
    update_readme(kernels_dir / "README.md", provenance, path.name)
    return ExportResult(path, provenance)


def _reverify(task: str, source: str, language: str, evaluator):
    if evaluator is not None:
        return evaluator.evaluate(task, source, language, time_it=True)
    from workers.devices import gpu_count
    from workers.sandbox import Evaluator
    own = Evaluator(gpu=0 if gpu_count() > 0 else None)
    try:
        return own.evaluate(task, source, language, time_it=True)
    finally:
        own.close()


def _refuse_if_slower(path: Path, new: dict) -> None:
    if not path.exists():
        return
    old = read_provenance(path)
    if old is None:  # the seed: the candidate was timed against it in the same process
        if new["speedup_seed"] is not None and new["speedup_seed"] < 1.0:
            raise ExportError(f"kept {path}: the seed measured faster on {new['device']} "
                              f"(candidate x{new['speedup_seed']:.2f} vs seed)", refused=True)
        return
    if old.get("device") == new["device"] and old.get("harness_version") == new["harness_version"] \
            and old.get("runtime_ms") is not None and old["runtime_ms"] <= new["runtime_ms"]:
        raise ExportError(f"kept {path}: candidate {old.get('candidate')} measured faster on {new['device']} "
                          f"({old['runtime_ms']:.4g} ms vs {new['runtime_ms']:.4g} ms)", refused=True)


# --- kernels/README.md ----------------------------------------------------------------------

def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _column_value(column: str, p: dict, filename: str) -> str | None:
    """What the export knows for a README column, matched by its header's words."""
    c = column.lower()

    def x(v):
        return "-" if v is None else f"{v:.2f}x"

    if "file" in c or "implementation" in c:
        return f"`{filename}`"
    if "provenance" in c or "origin" in c:
        return f"job {p['job']}, candidate {p['candidate']} ({p['strategy']}, LLM {p['llm'] or 'none'})"
    if "gpu" in c or "device" in c:
        return p["device"]
    if "compile" in c:
        return x(p["speedup_compile"])
    if "eager" in c:
        return x(p["speedup_eager"])
    if "seed" in c:
        return x(p["speedup_seed"])
    if "sol" in c or "speed-of-light" in c or "speed of light" in c:
        return "-" if p["sol_fraction"] is None else f"{100 * p['sol_fraction']:.0f}%"
    if "date" in c:
        return p["date"][:10]
    return None


def update_readme(readme: Path, p: dict, filename: str) -> bool:
    """Rewrite the task's row in the first table with a `task` column; append a row if the
    task has none. Columns the export knows nothing about keep their text. False if no table."""
    if not readme.exists():
        return False
    lines = readme.read_text().splitlines(keepends=True)
    for i, line in enumerate(lines):
        if not line.lstrip().startswith("|") or i + 1 >= len(lines) or not re.match(r"^\s*\|[\s:|-]+\|\s*$", lines[i + 1]):
            continue
        header = _cells(line)
        if not any(h.lower().strip("` *") in ("task", "op", "kernel") for h in header):
            continue
        key = next(j for j, h in enumerate(header) if h.lower().strip("` *") in ("task", "op", "kernel"))
        end = i + 2
        while end < len(lines) and lines[end].lstrip().startswith("|"):
            end += 1
        row_at = next((j for j in range(i + 2, end) if _cells(lines[j])[key].strip("` *") == p["task"]), None)
        old = _cells(lines[row_at]) if row_at is not None else [""] * len(header)
        old += [""] * (len(header) - len(old))
        new = [p["task"] if j == key and row_at is None else (_column_value(h, p, filename) or old[j])
               for j, h in enumerate(header)]
        text = "| " + " | ".join(new) + " |\n"
        if row_at is None:
            lines.insert(end, text)
        else:
            lines[row_at] = text
        _atomic_write(readme, "".join(lines))
        return True
    return False
