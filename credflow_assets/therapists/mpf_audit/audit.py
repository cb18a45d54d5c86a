"""The audit's rules: from a snapshot of the MPF to findings, for the whole MPF (`audit_mpf`) or
for one therapist (`audit_therapist`).

An id-less folder has no owner on record; it is *presumed* to belong to the therapist of its
oldest stamped file (the old system created the folder for the first upload that needed it, and
later uploads that found it by name were the misplaced ones). Files of anyone else in it are
misplaced.

`audit_mpf` walks the whole tree (snapshot.py says what that costs). `audit_therapist` looks
only at what carries the therapist's id (one appProperty query over Drive), their folders'
subtrees and the folders their files sit in: O(their files).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from credflow_assets.resources.drive import (
    FOLDER_MIME,
    DriveResource,
    escape_query_literal,
)
from credflow_assets.therapists import mpf
from credflow_assets.therapists.directory import Therapist
from credflow_assets.therapists.mpf_audit.findings import (
    FINDING_KINDS,
    AuditReport,
    DuplicateFolder,
    Finding,
    FolderWithoutId,
    MisplacedFile,
    MissingFile,
    NestedFolder,
)
from credflow_assets.therapists.mpf_audit.snapshot import (
    File,
    Folder,
    Locator,
    Snapshot,
    list_items,
    list_shallow,
    walk,
)

_esc = escape_query_literal


def _structural_findings(snapshot: Snapshot) -> list[Finding]:
    findings: list[Finding] = []
    folders = snapshot.folders
    for folder in folders.values():
        if folder.depth >= 1:
            findings.append(NestedFolder(
                folder_id=folder.id, folder_name=folder.name, therapist_id=folder.therapist_id,
                presumed_therapist_id=folder.presumed_therapist_id,
                parent_id=folder.parent_id, parent_name=folder.path[-2],
                root_folder_id=folder.ancestor_ids[0], root_folder_name=folder.path[0],
                path=folder.path, depth=folder.depth,
            ))
        elif folder.therapist_id is None:
            owners = Counter(f.therapist_id for f in folder.files if f.therapist_id)
            findings.append(FolderWithoutId(
                folder_id=folder.id, folder_name=folder.name,
                presumed_therapist_id=folder.presumed_therapist_id,
                files_by_owner=tuple(sorted(owners.items(), key=lambda kv: (-kv[1], kv[0]))),
                unstamped_file_count=sum(1 for f in folder.files if not f.therapist_id),
                subfolder_count=len(folder.subfolder_ids),
            ))
        expected = folder.effective_therapist_id
        for file in folder.files:
            if file.therapist_id and file.therapist_id != expected:
                findings.append(MisplacedFile(
                    file_id=file.id, file_name=file.name, owner_id=file.therapist_id,
                    folder_id=folder.id, folder_name=folder.name, folder_therapist_id=expected,
                    folder_id_presumed=folder.therapist_id is None,
                ))
    for file in snapshot.loose_files:
        findings.append(MisplacedFile(
            file_id=file.id, file_name=file.name, owner_id=file.therapist_id or "",
            folder_id=snapshot.root_id, folder_name="the MPF root", folder_therapist_id=None,
        ))
    by_therapist: dict[str, list[Folder]] = defaultdict(list)
    for folder in folders.values():
        if folder.depth == 0 and folder.therapist_id:
            by_therapist[folder.therapist_id].append(folder)
    for therapist_id, twins in by_therapist.items():
        if len(twins) > 1:
            twins.sort(key=Folder.order_key)
            findings.append(DuplicateFolder(
                therapist_id=therapist_id, folder_ids=tuple(f.id for f in twins),
                folder_names=tuple(f.name for f in twins),
            ))
    return findings


def _missing_findings(
    snapshot: Snapshot, keys_by_therapist: dict[str, Iterable[str]]
) -> list[Finding]:
    present = {f.source for f in snapshot.files() if f.rendition == "original" and f.source}
    findings: list[Finding] = []
    for therapist_id in sorted(keys_by_therapist):
        folder = _therapist_folder(snapshot, therapist_id)
        for key in sorted(set(keys_by_therapist[therapist_id])):
            source = mpf.source_id(key)
            if source not in present:
                findings.append(MissingFile(
                    therapist_id=therapist_id, s3_key=key, source=source,
                    folder_id=folder.id if folder else None,
                    folder_name=folder.name if folder else None,
                ))
    return findings


def _therapist_folder(snapshot: Snapshot, therapist_id: str) -> Folder | None:
    """Their folder: the oldest carrying their id at the root, else one presumed theirs."""
    found = snapshot.root_folders(therapist_id)
    if found:
        return found[0]
    presumed = sorted((f for f in snapshot.folders.values()
                       if f.effective_therapist_id == therapist_id), key=Folder.order_key)
    return presumed[0] if presumed else None


def _sorted(findings: list[Finding]) -> list[Finding]:
    def key(finding: Finding) -> tuple:
        order = FINDING_KINDS.index(finding.kind)
        if isinstance(finding, MisplacedFile):
            return (order, finding.owner_id, finding.folder_name, finding.file_name,
                    finding.file_id)
        if isinstance(finding, NestedFolder):
            return (order, finding.path, finding.folder_id)
        if isinstance(finding, DuplicateFolder):
            return (order, finding.therapist_id)
        if isinstance(finding, FolderWithoutId):
            return (order, finding.folder_name, finding.folder_id)
        return (order, finding.therapist_id, finding.s3_key)

    return sorted(findings, key=key)


def _upload_keys(s3_client: Any, bucket: str) -> dict[str, list[str]]:
    """`{therapist_id: [key, …]}` for every upload `{therapist_id}/{file}` in the bucket."""
    from credflow_assets.resources.s3 import iter_objects

    keys: dict[str, list[str]] = defaultdict(list)
    for entry in iter_objects(s3_client, bucket):
        key = entry["Key"]
        therapist_id, _, rest = key.partition("/")
        if therapist_id and rest and not key.endswith("/"):
            keys[therapist_id].append(key)
    return keys


def audit_mpf(
    drive: DriveResource,
    root_id: str,
    *,
    s3_client: Any = None,
    signup_bucket: str | None = None,
) -> AuditReport:
    """Audit the whole MPF under `root_id`; with `s3_client` and `signup_bucket`, also report
    every upload in the signup bucket that has no original file anywhere in the MPF."""
    snapshot = Snapshot(root_id=root_id, complete=True)
    starts = []
    for item in mpf.oldest_first(list(list_items(drive, f"'{_esc(root_id)}' in parents "
                                                   "and trashed = false"))):
        if item.get("mimeType") == FOLDER_MIME:
            starts.append(Folder.from_item(item, []))
        elif (item.get("appProperties") or {}).get(mpf.THERAPIST_ID):
            snapshot.loose_files.append(File.from_item(item, root_id))
    walk(drive, snapshot, starts)
    findings = _structural_findings(snapshot)
    s3_keys_checked = 0
    if s3_client is not None and signup_bucket:
        keys = _upload_keys(s3_client, signup_bucket)
        s3_keys_checked = sum(len(v) for v in keys.values())
        findings += _missing_findings(snapshot, keys)
    return AuditReport(
        root_id=root_id, findings=_sorted(findings), folders_checked=len(snapshot.folders),
        files_checked=sum(1 for _ in snapshot.files()), s3_keys_checked=s3_keys_checked,
        snapshot=snapshot,
    )


def audit_therapist(
    drive: DriveResource, root_id: str, therapist_id: str, *, expected_s3_keys: list[str]
) -> AuditReport:
    """The audit's rules for one therapist: their folders (twins, what is nested in them, other
    therapists' files in them), their own files sitting elsewhere in the MPF, and which of
    `expected_s3_keys` have no original file in the MPF. Costs O(this therapist's files)."""
    snapshot = Snapshot(root_id=root_id, complete=False)
    locator = Locator(drive, root_id)
    stamped = list(list_items(drive, (
        f"appProperties has {{ key='{mpf.THERAPIST_ID}' and value='{_esc(therapist_id)}' }} "
        "and trashed = false"
    )))
    # Their folders, wherever they are in the MPF, each walked with everything under it.
    starts = []
    for item in mpf.oldest_first([i for i in stamped if i.get("mimeType") == FOLDER_MIME]):
        chain = locator.chain(item)
        if chain is not None:
            starts.append(Folder.from_item(item, chain))
    start_ids = {folder.id for folder in starts}
    walk(drive, snapshot, [f for f in starts if not start_ids.intersection(f.ancestor_ids)])
    # Their files outside those folders: in someone else's folder, an id-less one, or loose.
    seen = {file.id for file in snapshot.files()}
    for item in mpf.oldest_first([i for i in stamped if i.get("mimeType") != FOLDER_MIME]):
        parents = item.get("parents") or []
        if item["id"] in seen or not parents:
            continue
        if root_id in parents:
            snapshot.loose_files.append(File.from_item(item, root_id))
            continue
        if parents[0] in snapshot.folders:
            continue  # listed already: the file was added after the walk passed
        folder_item = locator.folder(parents[0])
        chain = locator.chain(folder_item) if folder_item else None
        if folder_item is None or chain is None:
            continue  # not in this MPF
        folder = Folder.from_item(folder_item, chain)
        list_shallow(drive, folder)  # its files decide whose an id-less folder is
        snapshot.folders[folder.id] = folder
    findings = [f for f in _structural_findings(snapshot) if _concerns(f, therapist_id, snapshot)]
    findings += _missing_findings(snapshot, {therapist_id: expected_s3_keys})
    return AuditReport(
        root_id=root_id, findings=_sorted(findings), therapist_id=therapist_id,
        folders_checked=len(snapshot.folders), files_checked=sum(1 for _ in snapshot.files()),
        s3_keys_checked=len(set(expected_s3_keys)), snapshot=snapshot,
    )


def _concerns(finding: Finding, therapist_id: str, snapshot: Snapshot) -> bool:
    if isinstance(finding, MisplacedFile):
        return therapist_id in (finding.owner_id, finding.folder_therapist_id)
    if isinstance(finding, NestedFolder):
        folder = snapshot.folders[finding.folder_id]
        above = [snapshot.folders[i].effective_therapist_id
                 for i in folder.ancestor_ids if i in snapshot.folders]
        return therapist_id in (folder.effective_therapist_id,
                                *folder.ancestor_therapist_ids, *above)
    if isinstance(finding, DuplicateFolder):
        return finding.therapist_id == therapist_id
    if isinstance(finding, FolderWithoutId):
        return (finding.presumed_therapist_id == therapist_id
                or therapist_id in dict(finding.files_by_owner))
    return True


def therapist_resolver(engine: Any) -> Callable[[str], Therapist | None]:
    """`resolve_therapist` for `repair_mpf`, backed by the therapist directory."""
    from credflow_assets.therapists.directory import (
        UnknownTherapistError,
        get_therapist,
    )

    def resolve(therapist_id: str) -> Therapist | None:
        try:
            return get_therapist(engine, therapist_id)
        except UnknownTherapistError:
            return None

    return resolve
