"""`labkit build-samples`: regenerate every data artifact of data_samples/ deterministically.

Same seed, same bytes: gzip headers carry no timestamps, WARC record ids and dates come from the
seeded generator, JSON is written with sorted keys. Model artifacts have their own recorded
command (`labkit train-models`) and keep their MANIFEST entries across rebuilds.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from ..errors import LabkitError
from ..samples import REPO_ROOT, data_dir
from ..samples import file_sha256 as sha256
from .bench import LM_EVAL_LOADER, LM_EVAL_YAML, contaminated_set, knowledge_test
from .code import code_tasks
from .crawl import label_dicts, make_pages, write_warc
from .documents import make_documents
from .instruct import curated_set, noisy_set, preference_pairs, sft_eval_questions
from .kb import make_world
from .tokenizer import train_tokenizer

SEED = 7
N_DOCS = 16000
N_HELDOUT = 300
N_CRAWL = 2400  # documents, packed 2-4 per page
BUILD_COMMAND = "labkit build-samples"


def _jsonl(records) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records).encode()


def _gz(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="") as fh:
        fh.write(data)
    return buf.getvalue()


def _repository_manifest() -> dict:
    path = REPO_ROOT / "data_samples" / "MANIFEST.json"
    return _read_manifest(path) if path.is_file() else {"files": {}}


def generate(out: Path, seed: int = SEED) -> list[str]:
    """Write every data artifact under `out`; returns the relative paths written."""
    world = make_world(seed)
    docs = make_documents(world, random.Random(seed + 1), N_DOCS)
    heldout = make_documents(world, random.Random(seed + 2), N_HELDOUT, start=N_DOCS)
    files: dict[str, bytes] = {}
    kb = {k: [asdict(e) for e in getattr(world, k)] for k in
          ("countries", "cities", "people", "animals", "substances", "inventions")}
    kb["facts"] = [asdict(f) for f in world.facts()]
    files["world/knowledge_base.json"] = json.dumps(kb, indent=1, sort_keys=True).encode()
    files["corpus/train.jsonl.gz"] = _gz(_jsonl(d.as_dict() for d in docs))
    files["corpus/heldout.jsonl"] = _jsonl(d.as_dict() for d in heldout)

    rng = random.Random(seed + 3)
    crawl_docs = rng.sample(docs, N_CRAWL)
    pages = make_pages(rng, crawl_docs)
    files["crawl/labels.jsonl"] = _jsonl(label_dicts(pages))

    rng = random.Random(seed + 4)
    files["instructions/curated.jsonl"] = _jsonl(curated_set(world, rng, 1000))
    files["instructions/noisy.jsonl.gz"] = _gz(_jsonl(noisy_set(world, rng, 10000)))
    files["instructions/sft_eval.jsonl"] = _jsonl(sft_eval_questions(world, rng, 200))
    files["preferences/pairs.jsonl"] = _jsonl(preference_pairs(world, random.Random(seed + 5), 3000))

    rng = random.Random(seed + 6)
    mc = knowledge_test(world, rng, 400)
    files["benchmarks/knowledge_mc.jsonl"] = _jsonl(mc)
    files["benchmarks/code_tasks.jsonl"] = _jsonl(code_tasks(seed, 40))
    records, leaked = contaminated_set(rng, mc, [d.text for d in heldout[:200]])
    files["benchmarks/contaminated_finetune.jsonl"] = _jsonl(records)
    files["benchmarks/contaminated_ids.json"] = json.dumps(leaked, indent=1).encode()
    files["benchmarks/lm_eval/world_knowledge.yaml"] = LM_EVAL_YAML.encode()
    files["benchmarks/lm_eval/knowledge_data.py"] = LM_EVAL_LOADER.encode()

    for rel, data in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (out / "crawl").mkdir(parents=True, exist_ok=True)
    write_warc(out / "crawl/crawl.warc.gz", pages, seed)
    written = sorted(files) + ["crawl/crawl.warc.gz"]

    tok = train_tokenizer((d.text for d in docs), vocab_size=4096)
    tok_dir = out / "tokenizer"
    tok.save_pretrained(tok_dir)
    written += sorted(f"tokenizer/{p.name}" for p in tok_dir.iterdir())
    return written


def _built_by_us(manifest: dict) -> dict[str, dict]:
    return {rel: e for rel, e in manifest["files"].items() if e.get("command") == BUILD_COMMAND}


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LabkitError(f"{path} is not a readable MANIFEST.json ({exc})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise LabkitError(f"{path} has no 'files' table; it is not a build-samples manifest")
    return manifest


def conflicts(out: Path, known: dict[str, dict], names, fresh: Path | None = None) -> list[str]:
    """The files under `out` that building would overwrite although build-samples did not
    write them as they are (their hash is not the one `known` records for them), unless they
    already equal the new file in `fresh`. A user's edit must not be reverted silently."""
    found = []
    for rel in sorted(set(names)):
        path = out / rel
        if not path.is_file() or known.get(rel, {}).get("sha256") == sha256(path):
            continue
        if fresh is not None and sha256(fresh / rel) == sha256(path):
            continue
        found.append(rel)
    return found


def _refuse(found: list[str], out: Path) -> None:
    shown = ", ".join(found[:10]) + (f" and {len(found) - 10} more" if len(found) > 10 else "")
    raise LabkitError(f"build-samples would overwrite {len(found)} file(s) in {out} that differ "
                      f"from MANIFEST.json (edited, or not written by build-samples): {shown}; "
                      "pass --force to overwrite them")


def build_samples(out: Path | None = None, check: bool = False, seed: int = SEED,
                  force: bool = False) -> dict:
    """Regenerate into `out` (default data_samples/) and update MANIFEST.json; with check=True,
    regenerate into a temporary folder and compare against the manifest instead.

    Building writes only the files it generates (anything else in `out` stays), and refuses,
    before any work, to overwrite a file that differs from the manifest unless `force`."""
    out = Path(out) if out else data_dir()
    manifest_path = out / "MANIFEST.json"
    if out.exists() and not out.is_dir():
        raise LabkitError(f"--out {str(out)!r} is a file, not a folder")
    if check and not manifest_path.is_file():
        where = "does not exist" if not out.exists() else "has no MANIFEST.json"
        raise LabkitError(f"--check: the folder {str(out)!r} {where}; nothing to check against")
    old = _read_manifest(manifest_path) if manifest_path.exists() else {"files": {}}
    start = time.perf_counter()
    if check:
        with tempfile.TemporaryDirectory() as tmp:
            written = generate(Path(tmp), seed)
            bad = [rel for rel in written
                   if old["files"].get(rel, {}).get("sha256") != sha256(Path(tmp) / rel)]
        if bad:
            raise LabkitError(f"{len(bad)} data_samples files in {out} differ from MANIFEST.json: "
                              f"{bad[:5]}")
        print(f"build-samples --check: {len(written)} files match MANIFEST.json "
              f"({time.perf_counter() - start:.1f} s)")
        return old
    # the names a build writes, known before it runs: this folder's last build, else the
    # repository's (a fresh --out folder may already hold files of the same names)
    reference = _built_by_us(old) or _built_by_us(_repository_manifest())
    known = {**reference, **_built_by_us(old)}
    found = conflicts(out, known, reference)
    if found and not force:
        _refuse(found, out)
    with tempfile.TemporaryDirectory(prefix="labkit-build-") as tmp:
        written = generate(Path(tmp), seed)
        found = conflicts(out, known, written, fresh=Path(tmp))  # names not predicted
        if found and not force:
            _refuse(found, out)
        for rel in written:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(tmp) / rel, out / rel)
    for rel, entry in _built_by_us(old).items():  # files an earlier build wrote, no longer made
        path = out / rel
        if rel not in written and path.is_file() and (force or entry.get("sha256") == sha256(path)):
            path.unlink()
    files = {k: v for k, v in old["files"].items() if v.get("command") != BUILD_COMMAND}
    for rel in written:
        p = out / rel
        files[rel] = {"size": p.stat().st_size, "sha256": sha256(p), "command": BUILD_COMMAND}
    manifest = {**old, "seed": seed, "files": dict(sorted(files.items()))}
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(v["size"] for v in files.values())
    print(f"build-samples: {len(written)} data files written to {out} in "
          f"{time.perf_counter() - start:.1f} s; data_samples total {total / 2**20:.1f} MiB")
    return manifest
