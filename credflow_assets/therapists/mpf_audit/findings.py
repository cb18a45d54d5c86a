"""What the MPF audit reports: one dataclass per kind of finding, each with ids, names and a
sentence a person can act on, and the report that holds them (`AuditReport`).

- `misplaced_file`: a file stamped with a therapist id other than its folder's;
- `nested_folder`: a folder inside a therapist folder, at any depth;
- `duplicate_folder`: two or more MPF-root folders carrying one therapist id;
- `folder_without_id`: an MPF-root folder without a therapist id (the old system's `Last, First`);
- `missing_file`: an upload in S3 with no `original` file anywhere in the MPF.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Union

from credflow_assets.therapists import mpf

if TYPE_CHECKING:
    from credflow_assets.therapists.mpf_audit.snapshot import Snapshot

FINDING_KINDS = (
    "misplaced_file", "nested_folder", "duplicate_folder", "folder_without_id", "missing_file",
)


class FindingBase:
    kind: ClassVar[str]

    @property
    def sentence(self) -> str:  # pragma: no cover - every kind overrides it
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        data = _jsonable(asdict(self))  # type: ignore[call-overload]
        return {"kind": self.kind, **data, "sentence": self.sentence}

    def __str__(self) -> str:
        return self.sentence


@dataclass(frozen=True)
class MisplacedFile(FindingBase):
    kind: ClassVar[str] = "misplaced_file"
    file_id: str
    file_name: str
    owner_id: str  # the therapist id stamped on the file
    folder_id: str  # where it is (the MPF root itself for a loose file)
    folder_name: str
    folder_therapist_id: str | None  # the folder's therapist (presumed if the folder has no id)
    folder_id_presumed: bool = False

    @property
    def sentence(self) -> str:
        if self.folder_therapist_id is None:
            where = f"loose in {self.folder_name} ({self.folder_id})"
        elif self.folder_id_presumed:
            where = (f"in folder '{self.folder_name}' ({self.folder_id}), an id-less folder "
                     f"presumed to be therapist {self.folder_therapist_id}'s (its oldest file is)")
        else:
            where = (f"in folder '{self.folder_name}' ({self.folder_id}) of therapist "
                     f"{self.folder_therapist_id}")
        return (f"file '{self.file_name}' ({self.file_id}) belongs to therapist {self.owner_id} "
                f"but is {where}")


@dataclass(frozen=True)
class NestedFolder(FindingBase):
    kind: ClassVar[str] = "nested_folder"
    folder_id: str
    folder_name: str
    therapist_id: str | None  # the folder's own id (None for an old-system folder)
    presumed_therapist_id: str | None  # for an id-less folder: whose files it holds
    parent_id: str
    parent_name: str
    root_folder_id: str  # the MPF-root folder it is (ultimately) inside
    root_folder_name: str
    path: tuple[str, ...]  # folder names from the MPF-root folder down to this one
    depth: int  # 1 = inside an MPF-root folder, 2 = inside one of its subfolders, …

    @property
    def sentence(self) -> str:
        if self.therapist_id:
            whose = f"the folder of therapist {self.therapist_id}"
        elif self.presumed_therapist_id:
            whose = (f"an id-less folder holding therapist {self.presumed_therapist_id}'s files")
        else:
            whose = "an id-less folder with no therapist's files"
        return (f"folder '{' / '.join(self.path)}' ({self.folder_id}), {whose}, is nested "
                f"{self.depth} level(s) deep inside '{self.root_folder_name}' "
                f"({self.root_folder_id}); therapist folders belong directly under the MPF root")


@dataclass(frozen=True)
class DuplicateFolder(FindingBase):
    kind: ClassVar[str] = "duplicate_folder"
    therapist_id: str
    folder_ids: tuple[str, ...]  # oldest first: the first is the one to keep
    folder_names: tuple[str, ...]

    @property
    def keeper_id(self) -> str:
        return self.folder_ids[0]

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "keeper_id": self.keeper_id}

    @property
    def sentence(self) -> str:
        listed = ", ".join(f"'{n}' ({i})" for i, n in zip(self.folder_ids, self.folder_names))
        return (f"therapist {self.therapist_id} has {len(self.folder_ids)} folders in the MPF "
                f"root: {listed}; the oldest, {self.folder_ids[0]}, is the one to keep")


@dataclass(frozen=True)
class FolderWithoutId(FindingBase):
    kind: ClassVar[str] = "folder_without_id"
    folder_id: str
    folder_name: str
    presumed_therapist_id: str | None
    files_by_owner: tuple[tuple[str, int], ...]  # (therapist id, file count), most files first
    unstamped_file_count: int  # files carrying no therapist id at all
    subfolder_count: int

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "files_by_owner": dict(self.files_by_owner)}

    @property
    def sentence(self) -> str:
        parts = [f"{count} file(s) of therapist {owner}" for owner, count in self.files_by_owner]
        if self.unstamped_file_count:
            parts.append(f"{self.unstamped_file_count} file(s) without a therapist id")
        if self.subfolder_count:
            parts.append(f"{self.subfolder_count} subfolder(s)")
        held = ", ".join(parts) or "nothing"
        presumed = (f"; presumed therapist {self.presumed_therapist_id}'s (its oldest file is)"
                    if self.presumed_therapist_id else "")
        return (f"folder '{self.folder_name}' ({self.folder_id}) has no "
                f"{mpf.THERAPIST_ID} (an old-system folder, found by its name){presumed}; "
                f"it holds {held}")


@dataclass(frozen=True)
class MissingFile(FindingBase):
    kind: ClassVar[str] = "missing_file"
    therapist_id: str
    s3_key: str
    source: str  # `mpf.source_id(s3_key)`, the `credflow_source` an original would carry
    folder_id: str | None  # the therapist's folder, None when they have none at all
    folder_name: str | None

    @property
    def therapist_has_folder(self) -> bool:
        return self.folder_id is not None

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "therapist_has_folder": self.therapist_has_folder}

    @property
    def sentence(self) -> str:
        if self.folder_id is None:
            where = f"therapist {self.therapist_id} has no folder in the MPF at all"
        else:
            where = f"their folder is '{self.folder_name}' ({self.folder_id})"
        return (f"upload {self.s3_key} of therapist {self.therapist_id} is in S3 but has no "
                f"original file anywhere in the MPF; {where}")


Finding = Union[MisplacedFile, NestedFolder, DuplicateFolder, FolderWithoutId, MissingFile]


@dataclass
class AuditReport:
    root_id: str
    findings: list[Finding]
    therapist_id: str | None = None  # set by `audit_therapist`: the scope of this report
    folders_checked: int = 0
    files_checked: int = 0
    s3_keys_checked: int = 0
    # What the audit saw, for `repair_mpf` (not part of the report's value or its JSON).
    snapshot: Snapshot | None = field(default=None, repr=False, compare=False)

    @property
    def is_clean(self) -> bool:
        return not self.findings

    def by_kind(self) -> dict[str, list[Finding]]:
        grouped: dict[str, list[Finding]] = {kind: [] for kind in FINDING_KINDS}
        for finding in self.findings:
            grouped[finding.kind].append(finding)
        return grouped

    def to_dict(self) -> dict[str, Any]:
        return {
            "root_id": self.root_id,
            "therapist_id": self.therapist_id,
            "clean": self.is_clean,
            "checked": {"folders": self.folders_checked, "files": self.files_checked,
                        "s3_keys": self.s3_keys_checked},
            "counts": {kind: len(items) for kind, items in self.by_kind().items()},
            "findings": [finding.to_dict() for finding in self.findings],
        }

    def summary_lines(self) -> list[str]:
        scope = f"therapist {self.therapist_id} in " if self.therapist_id else ""
        s3 = f", {self.s3_keys_checked} S3 upload(s)" if self.s3_keys_checked else ""
        lines = [
            f"MPF audit of {scope}root folder {self.root_id}: {self.folders_checked} folder(s), "
            f"{self.files_checked} file(s){s3} checked; "
            + ("clean" if self.is_clean else f"{len(self.findings)} finding(s)")
        ]
        for kind, items in self.by_kind().items():
            if items:
                lines.append(f"{kind}: {len(items)}")
                lines.extend(f"  - {item.sentence}" for item in items)
        return lines


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value
