"""A DICOMDIR's file-set as a tree: patient / study / series / image, with counts and missing files.

``fastdcm info DICOMDIR`` prints it (``--json``: the same tree as JSON). Patient names and IDs and
study dates are shown as ``<masked>`` unless ``allow_phi`` (patients are then told apart by their number).
A record's file counts as missing when nothing is at its path; a record whose file lies outside
the file-set's folder is flagged ``outside`` (``fastdcm convert`` refuses those).
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["fileset_tree", "format_tree"]

MASK = "<masked>"


def _get(record: Any, keyword: str) -> Any:
    value = record.get(keyword)
    return None if value is None or value == "" else str(value)


def fileset_tree(path: str, *, allow_phi: bool = False) -> dict:
    """The tree of the DICOMDIR at ``path`` (see the module docstring), from its directory records
    (pydicom's FileSet leaves out records whose file is missing; this shows them)."""
    import pydicom

    root = os.path.dirname(os.path.abspath(path))
    ds = pydicom.dcmread(path)
    records = {rec.seq_item_tell: rec for rec in ds.get("DirectoryRecordSequence", [])}

    def chain(offset: Any) -> list:
        out, seen = [], set()
        while offset and offset in records and offset not in seen:  # a loop of offsets ends the chain
            seen.add(offset)
            rec = records[offset]
            out.append(rec)
            offset = rec.get("OffsetOfTheNextDirectoryRecord")
        return out

    def children(rec: Any) -> list:
        return chain(rec.get("OffsetOfReferencedLowerLevelDirectoryEntity"))

    def leaf(rec: Any) -> dict:
        parts = rec.get("ReferencedFileID")
        parts = [parts] if isinstance(parts, str) else list(parts or [])
        file = os.path.normpath(os.path.join(root, *[str(p) for p in parts])) if parts else None
        rel = os.path.relpath(file, root).replace(os.sep, "/") if file else None
        outside = bool(rel) and (rel == os.pardir or rel.startswith(os.pardir + "/"))
        return {
            "record": str(rec.get("DirectoryRecordType", "")).strip(),
            "file": rel,
            "missing": file is None or not os.path.isfile(file),
            **({"outside": True} if outside else {}),
        }

    tree = []
    for i, prec in enumerate(chain(ds.get("OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity")), 1):
        patient = {
            "patient": i,
            "PatientID": _get(prec, "PatientID") if allow_phi else MASK,
            "PatientName": _get(prec, "PatientName") if allow_phi else MASK,
            "studies": [],
        }
        for strec in children(prec):
            date = _get(strec, "StudyDate") if allow_phi else MASK
            study = {"StudyInstanceUID": _get(strec, "StudyInstanceUID"), "StudyDate": date,
                     "StudyDescription": _get(strec, "StudyDescription"), "series": []}
            for serec in children(strec):
                study["series"].append({
                    "SeriesInstanceUID": _get(serec, "SeriesInstanceUID"), "Modality": _get(serec, "Modality"),
                    "SeriesNumber": _get(serec, "SeriesNumber"), "images": [leaf(r) for r in children(serec)],
                })
            patient["studies"].append(study)
        tree.append(patient)
    images = [im for p in tree for st in p["studies"] for se in st["series"] for im in se["images"]]
    return {
        "dicomdir": os.path.abspath(path),
        "counts": {
            "patients": len(tree),
            "studies": sum(len(p["studies"]) for p in tree),
            "series": sum(len(st["series"]) for p in tree for st in p["studies"]),
            "images": len(images),
            "missing": sum(im["missing"] for im in images),
        },
        "patients": tree,
    }


def format_tree(tree: dict) -> str:
    c = tree["counts"]
    lines = [f"DICOMDIR {tree['dicomdir']}: {c['patients']} patient(s), {c['studies']} study(ies), "
             f"{c['series']} series, {c['images']} image(s), {c['missing']} missing"]
    for p in tree["patients"]:
        lines.append(f"patient {p['patient']}: {p['PatientName']} (ID {p['PatientID']})")
        for st in p["studies"]:
            desc = f" {st['StudyDescription']}" if st["StudyDescription"] else ""
            lines.append(f"  study {st['StudyInstanceUID']} {st['StudyDate'] or ''}{desc}: {len(st['series'])} series")
            for se in st["series"]:
                lines.append(f"    series {se['SeriesInstanceUID']} {se['Modality'] or ''}: {len(se['images'])} image(s)")
                for im in se["images"]:
                    flags = " [missing]" * im["missing"] + " [outside the file-set]" * bool(im.get("outside"))
                    lines.append(f"      {im['file']}{flags}")
    return "\n".join(lines)
