"""The MPF audit and its repair: find what the old, name-based system left behind, then fix it.

The source system found therapist folders by name, so files landed in the wrong therapist's
folder (Lamb's files in `Lambert, Nicholas`), folders were created inside other folders ("nesting
dolls"), twins appeared, and some uploads never reached Drive at all. The audit reads the MPF
(never by name: by the `credflow_therapist_id` appProperty on folders and files) and reports each
problem as a finding a person can act on; the repair moves things into place with the folder rules
of `mpf.py`.

Findings (one dataclass per kind, each with ids, names and a sentence):

- `misplaced_file`: a file stamped with a therapist id other than its folder's;
- `nested_folder`: a folder inside a therapist folder, at any depth;
- `duplicate_folder`: two or more MPF-root folders carrying one therapist id;
- `folder_without_id`: an MPF-root folder without a therapist id (the old system's `Last, First`);
- `missing_file`: an upload in S3 with no `original` file anywhere in the MPF.

An id-less folder has no owner on record; it is *presumed* to belong to the therapist of its
oldest stamped file (the old system created the folder for the first upload that needed it, and
later uploads that found it by name were the misplaced ones). Files of anyone else in it are
misplaced.

Cost: `audit_mpf` lists the tree level by level, the children of up to `PARENTS_PER_QUERY`
folders per `files.list` query (about 20 with Drive's 33-character ids, see `MAX_QUERY_CHARS`),
each query paged `LIST_PAGE_SIZE` at a time: a thousand folders cost about fifty requests.
`audit_therapist` looks only at what carries the therapist's id (one appProperty query over
Drive), their folders' subtrees and the folders their files sit in: O(their files).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Union

from credflow_assets.resources.drive import (
    FOLDER_MIME,
    DriveError,
    DriveResource,
    escape_query_literal,
)
from credflow_assets.therapists import mpf
from credflow_assets.therapists.directory import Therapist

FINDING_KINDS = (
    "misplaced_file", "nested_folder", "duplicate_folder", "folder_without_id", "missing_file",
)
LIST_PAGE_SIZE = 1000  # Drive's maximum page size for files.list
PARENTS_PER_QUERY = 40  # at most this many `'<id>' in parents` terms OR-ed in one `q` …
# … and the URL-encoded `q` at most this long: googleapiclient turns a GET whose URL passes 2,048
# characters into a POST with a method override, which the local Drive server does not take.
MAX_QUERY_CHARS = 1200
_MAX_DEPTH = 64  # a guard for the ancestor walk; real MPF trees are a few levels deep

_esc = escape_query_literal


# ---------------------------------------------------------------------------------------------
# Findings


class _Finding:
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
class MisplacedFile(_Finding):
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
class NestedFolder(_Finding):
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
class DuplicateFolder(_Finding):
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
class FolderWithoutId(_Finding):
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
class MissingFile(_Finding):
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
    snapshot: _Snapshot | None = field(default=None, repr=False, compare=False)

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


# ---------------------------------------------------------------------------------------------
# What the audit saw


@dataclass
class _File:
    id: str
    name: str
    parent_id: str
    therapist_id: str | None
    source: str | None
    rendition: str | None
    created: str

    @classmethod
    def from_item(cls, item: dict, parent_id: str) -> _File:
        properties = item.get("appProperties") or {}
        return cls(
            id=item["id"], name=item.get("name", ""), parent_id=parent_id,
            therapist_id=properties.get(mpf.THERAPIST_ID) or None,
            source=properties.get(mpf.SOURCE), rendition=properties.get(mpf.RENDITION),
            created=item.get("createdTime", ""),
        )


@dataclass
class _Folder:
    id: str
    name: str
    parent_id: str
    therapist_id: str | None
    created: str
    depth: int  # 0: a direct child of the MPF root
    path: tuple[str, ...]  # names from the MPF-root folder down to this folder
    ancestor_ids: tuple[str, ...]  # ids from the MPF-root folder down to the parent
    ancestor_therapist_ids: tuple[str | None, ...]
    files: list[_File] = field(default_factory=list)
    subfolder_ids: list[str] = field(default_factory=list)

    @classmethod
    def from_item(cls, item: dict, chain: list[dict]) -> _Folder:
        """`chain`: the folders from the MPF-root folder down to the item's parent."""
        return cls(
            id=item["id"], name=item.get("name", ""),
            parent_id=(item.get("parents") or [""])[0],
            therapist_id=(item.get("appProperties") or {}).get(mpf.THERAPIST_ID) or None,
            created=item.get("createdTime", ""), depth=len(chain),
            path=tuple(c.get("name", "") for c in chain) + (item.get("name", ""),),
            ancestor_ids=tuple(c["id"] for c in chain),
            ancestor_therapist_ids=tuple(
                (c.get("appProperties") or {}).get(mpf.THERAPIST_ID) for c in chain
            ),
        )

    def child(self, item: dict) -> _Folder:
        return _Folder(
            id=item["id"], name=item.get("name", ""), parent_id=self.id,
            therapist_id=(item.get("appProperties") or {}).get(mpf.THERAPIST_ID) or None,
            created=item.get("createdTime", ""), depth=self.depth + 1,
            path=self.path + (item.get("name", ""),), ancestor_ids=self.ancestor_ids + (self.id,),
            ancestor_therapist_ids=self.ancestor_therapist_ids + (self.therapist_id,),
        )

    @property
    def presumed_therapist_id(self) -> str | None:
        """For an id-less folder: the therapist of its oldest stamped file."""
        if self.therapist_id is not None:
            return None
        stamped = sorted((f for f in self.files if f.therapist_id), key=lambda f: (f.created, f.id))
        return stamped[0].therapist_id if stamped else None

    @property
    def effective_therapist_id(self) -> str | None:
        return self.therapist_id or self.presumed_therapist_id

    def order_key(self) -> tuple[str, str]:
        return (self.created, self.id)


@dataclass
class _Snapshot:
    root_id: str
    complete: bool  # True: the whole MPF was walked (audit_mpf); False: one therapist's part
    folders: dict[str, _Folder] = field(default_factory=dict)
    loose_files: list[_File] = field(default_factory=list)  # stamped files right in the root

    def files(self) -> Iterator[_File]:
        for folder in self.folders.values():
            yield from folder.files
        yield from self.loose_files

    def root_folders(self, therapist_id: str) -> list[_Folder]:
        return sorted((f for f in self.folders.values()
                       if f.depth == 0 and f.therapist_id == therapist_id), key=_Folder.order_key)


def _list(drive: DriveResource, q: str) -> Iterator[dict]:
    return drive.list_files(q, fields=mpf.ITEM_FIELDS, page_size=LIST_PAGE_SIZE)


def _parent_queries(folders: list[_Folder]) -> Iterator[tuple[dict[str, _Folder], str]]:
    """`({folder id: folder}, q)` listing the children of up to `PARENTS_PER_QUERY` folders at
    once, each `q` short enough for a GET."""
    from urllib.parse import quote_plus

    def query(terms: list[str]) -> str:
        return f"({' or '.join(terms)}) and trashed = false"

    batch: dict[str, _Folder] = {}
    terms: list[str] = []
    for folder in folders:
        term = f"'{_esc(folder.id)}' in parents"
        if terms and (len(terms) >= PARENTS_PER_QUERY
                      or len(quote_plus(query([*terms, term]))) > MAX_QUERY_CHARS):
            yield batch, query(terms)
            batch, terms = {}, []
        batch[folder.id] = folder
        terms.append(term)
    if terms:
        yield batch, query(terms)


def _walk(drive: DriveResource, snapshot: _Snapshot, starts: list[_Folder]) -> None:
    """Add `starts` and everything under them to the snapshot, one tree level at a time."""
    frontier = [folder for folder in starts if folder.id not in snapshot.folders]
    for folder in frontier:
        snapshot.folders[folder.id] = folder
    while frontier:
        next_frontier: list[_Folder] = []
        for by_id, q in _parent_queries(frontier):
            for item in _list(drive, q):
                parent_id = next((p for p in item.get("parents") or [] if p in by_id), None)
                if parent_id is None:
                    continue
                parent = by_id[parent_id]
                if item.get("mimeType") == FOLDER_MIME:
                    if item["id"] in snapshot.folders:
                        continue
                    child = parent.child(item)
                    parent.subfolder_ids.append(child.id)
                    snapshot.folders[child.id] = child
                    next_frontier.append(child)
                else:
                    parent.files.append(_File.from_item(item, parent_id))
        frontier = next_frontier


def _list_shallow(drive: DriveResource, folder: _Folder) -> None:
    """A folder's own files and subfolder ids, without walking the subfolders."""
    for item in _list(drive, f"'{_esc(folder.id)}' in parents and trashed = false"):
        if item.get("mimeType") == FOLDER_MIME:
            folder.subfolder_ids.append(item["id"])
        else:
            folder.files.append(_File.from_item(item, folder.id))


class _Locator:
    """Where an item sits relative to the MPF root: the chain of folders from the MPF-root
    folder down to its parent, or None when it is not under the MPF root at all."""

    def __init__(self, drive: DriveResource, root_id: str) -> None:
        self.drive, self.root_id = drive, root_id
        self._folders: dict[str, dict | None] = {}
        self._chains: dict[str, list[dict] | None] = {}

    def chain(self, item: dict) -> list[dict] | None:
        parents = item.get("parents") or []
        if self.root_id in parents:
            return []
        if not parents:
            return None
        return self._chain_to(parents[0], 0)

    def folder(self, folder_id: str) -> dict | None:
        if folder_id not in self._folders:
            found = self.drive.find_file(folder_id, fields=mpf.ITEM_FIELDS)
            self._folders[folder_id] = found if found and not found.get("trashed") else None
        return self._folders[folder_id]

    def _chain_to(self, folder_id: str, depth: int) -> list[dict] | None:
        """The chain ending with `folder_id` itself."""
        if folder_id in self._chains:
            return self._chains[folder_id]
        folder = self.folder(folder_id)
        chain: list[dict] | None = None
        if folder is not None and depth < _MAX_DEPTH:
            parents = folder.get("parents") or []
            if self.root_id in parents:
                chain = [folder]
            elif parents:
                above = self._chain_to(parents[0], depth + 1)
                chain = None if above is None else [*above, folder]
        self._chains[folder_id] = chain
        return chain


# ---------------------------------------------------------------------------------------------
# The rules


def _structural_findings(snapshot: _Snapshot) -> list[Finding]:
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
    by_therapist: dict[str, list[_Folder]] = defaultdict(list)
    for folder in folders.values():
        if folder.depth == 0 and folder.therapist_id:
            by_therapist[folder.therapist_id].append(folder)
    for therapist_id, twins in by_therapist.items():
        if len(twins) > 1:
            twins.sort(key=_Folder.order_key)
            findings.append(DuplicateFolder(
                therapist_id=therapist_id, folder_ids=tuple(f.id for f in twins),
                folder_names=tuple(f.name for f in twins),
            ))
    return findings


def _missing_findings(
    snapshot: _Snapshot, keys_by_therapist: dict[str, Iterable[str]]
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


def _therapist_folder(snapshot: _Snapshot, therapist_id: str) -> _Folder | None:
    """Their folder: the oldest carrying their id at the root, else one presumed theirs."""
    found = snapshot.root_folders(therapist_id)
    if found:
        return found[0]
    presumed = sorted((f for f in snapshot.folders.values()
                       if f.effective_therapist_id == therapist_id), key=_Folder.order_key)
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


# ---------------------------------------------------------------------------------------------
# The audits


def audit_mpf(
    drive: DriveResource,
    root_id: str,
    *,
    s3_client: Any = None,
    signup_bucket: str | None = None,
) -> AuditReport:
    """Audit the whole MPF under `root_id`; with `s3_client` and `signup_bucket`, also report
    every upload in the signup bucket that has no original file anywhere in the MPF."""
    snapshot = _Snapshot(root_id=root_id, complete=True)
    starts = []
    for item in mpf.oldest_first(list(_list(drive, f"'{_esc(root_id)}' in parents "
                                                   "and trashed = false"))):
        if item.get("mimeType") == FOLDER_MIME:
            starts.append(_Folder.from_item(item, []))
        elif (item.get("appProperties") or {}).get(mpf.THERAPIST_ID):
            snapshot.loose_files.append(_File.from_item(item, root_id))
    _walk(drive, snapshot, starts)
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
    snapshot = _Snapshot(root_id=root_id, complete=False)
    locator = _Locator(drive, root_id)
    stamped = list(_list(drive, (
        f"appProperties has {{ key='{mpf.THERAPIST_ID}' and value='{_esc(therapist_id)}' }} "
        "and trashed = false"
    )))
    # Their folders, wherever they are in the MPF, each walked with everything under it.
    starts = []
    for item in mpf.oldest_first([i for i in stamped if i.get("mimeType") == FOLDER_MIME]):
        chain = locator.chain(item)
        if chain is not None:
            starts.append(_Folder.from_item(item, chain))
    start_ids = {folder.id for folder in starts}
    _walk(drive, snapshot, [f for f in starts if not start_ids.intersection(f.ancestor_ids)])
    # Their files outside those folders: in someone else's folder, an id-less one, or loose.
    seen = {file.id for file in snapshot.files()}
    for item in mpf.oldest_first([i for i in stamped if i.get("mimeType") != FOLDER_MIME]):
        parents = item.get("parents") or []
        if item["id"] in seen or not parents:
            continue
        if root_id in parents:
            snapshot.loose_files.append(_File.from_item(item, root_id))
            continue
        if parents[0] in snapshot.folders:
            continue  # listed already: the file was added after the walk passed
        folder_item = locator.folder(parents[0])
        chain = locator.chain(folder_item) if folder_item else None
        if folder_item is None or chain is None:
            continue  # not in this MPF
        folder = _Folder.from_item(folder_item, chain)
        _list_shallow(drive, folder)  # its files decide whose an id-less folder is
        snapshot.folders[folder.id] = folder
    findings = [f for f in _structural_findings(snapshot) if _concerns(f, therapist_id, snapshot)]
    findings += _missing_findings(snapshot, {therapist_id: expected_s3_keys})
    return AuditReport(
        root_id=root_id, findings=_sorted(findings), therapist_id=therapist_id,
        folders_checked=len(snapshot.folders), files_checked=sum(1 for _ in snapshot.files()),
        s3_keys_checked=len(set(expected_s3_keys)), snapshot=snapshot,
    )


def _concerns(finding: Finding, therapist_id: str, snapshot: _Snapshot) -> bool:
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
    from credflow_assets.therapists.directory import UnknownTherapistError, get_therapist

    def resolve(therapist_id: str) -> Therapist | None:
        try:
            return get_therapist(engine, therapist_id)
        except UnknownTherapistError:
            return None

    return resolve


# ---------------------------------------------------------------------------------------------
# Repair

REPAIR_KINDS_THAT_CHANGE_DRIVE = frozenset(
    {"unnest_folder", "merge_folders", "adopt_folder", "move_file", "delete_folder"}
)


@dataclass(frozen=True)
class RepairAction:
    """One step of a repair. `status`: "planned" (dry run), "done", "skipped" (nothing left to
    do when it ran) or "left" (needs a person, or waits for the next sync)."""

    kind: str  # unnest_folder | merge_folders | adopt_folder | move_file | delete_folder
    #            | leave | reprocess
    sentence: str
    status: str
    therapist_id: str | None = None
    item_id: str | None = None  # the file or folder acted on
    item_name: str | None = None
    target_id: str | None = None  # where it went (folder moved into, kept folder, …)

    @property
    def changes_drive(self) -> bool:
        return self.kind in REPAIR_KINDS_THAT_CHANGE_DRIVE and self.status in ("planned", "done")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "changes_drive": self.changes_drive}

    def __str__(self) -> str:
        return self.sentence if self.status in ("planned", "done") else (
            f"{self.sentence} [{self.status}]"
        )


@dataclass
class _Step:
    kind: str
    sentence: str
    therapist_id: str | None = None
    item_id: str | None = None
    item_name: str | None = None
    target_id: str | None = None
    # Runs the step against Drive: returns (status, note appended to the sentence, target id).
    run: Callable[[_Executor], tuple[str, str, str | None]] | None = None

    def action(self, status: str, note: str = "", target_id: str | None = None) -> RepairAction:
        return RepairAction(
            kind=self.kind, sentence=self.sentence + (f" ({note})" if note else ""),
            status=status, therapist_id=self.therapist_id, item_id=self.item_id,
            item_name=self.item_name, target_id=target_id or self.target_id,
        )


def repair_mpf(
    drive: DriveResource,
    root_id: str,
    report: AuditReport,
    *,
    resolve_therapist: Callable[[str], Therapist | None],
    dry_run: bool,
) -> list[RepairAction]:
    """Fix what `report` found, in this order: un-nest folders to the MPF root, merge twins into
    the oldest, adopt id-less folders that hold one therapist's files (id + label), move misplaced
    files into their owner's folder, empty and delete the remaining id-less folders. Missing
    uploads are left to the next `credflow sync`/reconciliation. `dry_run=True` changes nothing
    and returns the same plan. Running it again after a repair changes nothing."""
    if report.snapshot is None or report.root_id != root_id:
        raise ValueError("repair_mpf needs the report of audit_mpf/audit_therapist for this root")
    steps = _Planner(drive, root_id, report, resolve_therapist).plan()
    if dry_run:
        return [step.action("planned") for step in steps]
    executor = _Executor(drive, root_id)
    actions = []
    for step in steps:
        if step.run is None:
            actions.append(step.action("left"))
        else:
            status, note, target = step.run(executor)
            actions.append(step.action(status, note, target))
    for folder_id in sorted(executor.filled):
        mpf.collapse_duplicate_files(drive, folder_id)
    return actions


@dataclass
class _PlannedFolder:
    id: str | None  # None: created by the repair
    name: str


class _Planner:
    """Turns findings plus the snapshot into steps, simulating the repair as it goes so the dry
    run says exactly what the real run will do."""

    def __init__(self, drive: DriveResource, root_id: str, report: AuditReport,
                 resolve: Callable[[str], Therapist | None]) -> None:
        self.drive, self.root_id, self.report = drive, root_id, report
        self.snapshot: _Snapshot = report.snapshot  # type: ignore[assignment]
        self._resolve, self._therapists = resolve, {}
        self.folder_of: dict[str, _PlannedFolder] = {}  # therapist id -> their folder (planned)
        self.steps: list[_Step] = []

    def therapist(self, therapist_id: str) -> Therapist | None:
        if therapist_id not in self._therapists:
            self._therapists[therapist_id] = self._resolve(therapist_id)
        return self._therapists[therapist_id]

    def plan(self) -> list[_Step]:
        kinds = self.report.by_kind()
        folders = self.snapshot.folders
        nested = [f for f in kinds["nested_folder"] if isinstance(f, NestedFolder)]
        # After un-nesting, every folder the repair deals with is at the MPF root.
        at_root = [f for f in folders.values() if f.depth == 0]
        at_root += [folders[n.folder_id] for n in nested]
        for finding in nested:
            self._unnest(finding)
        self._merge_twins(at_root)
        # The id-less folders the report is about (for audit_therapist: those that concern the
        # therapist; other folders in its snapshot are left alone).
        reported = {f.folder_id for f in kinds["folder_without_id"]
                    if isinstance(f, FolderWithoutId)}
        reported |= {n.folder_id for n in nested if n.therapist_id is None}
        id_less = sorted((folders[i] for i in reported), key=_Folder.order_key)
        misplaced = [f for f in kinds["misplaced_file"] if isinstance(f, MisplacedFile)]
        misplaced_ids = {f.file_id for f in misplaced}
        moving_out = {f.file_id for f in misplaced if self.therapist(f.owner_id)}
        adopted = {folder.id for folder in id_less if self._adopt(folder, moving_out)}
        for finding in misplaced:
            self._move(finding.file_id, finding.file_name, finding.owner_id,
                       finding.folder_id, finding.folder_name)
        for folder in id_less:
            if folder.id not in adopted:
                self._empty_and_delete(folder, misplaced_ids)
        for finding in kinds["missing_file"]:
            assert isinstance(finding, MissingFile)
            self.steps.append(_Step(
                "reprocess",
                f"upload {finding.s3_key} of therapist {finding.therapist_id} has no file in the "
                "MPF: it will be re-processed by the next `credflow sync`/reconciliation "
                "(nothing is converted here)",
                therapist_id=finding.therapist_id, item_id=finding.s3_key,
            ))
        return self.steps

    # -- steps --------------------------------------------------------------------------------

    def _unnest(self, finding: NestedFolder) -> None:
        folder_id = finding.folder_id

        def run(ex: _Executor) -> tuple[str, str, str | None]:
            return ex.unnest(folder_id)

        self.steps.append(_Step(
            "unnest_folder",
            f"move folder '{' / '.join(finding.path)}' ({folder_id}) out of "
            f"'{finding.parent_name}' to the MPF root",
            therapist_id=finding.therapist_id or finding.presumed_therapist_id,
            item_id=folder_id, item_name=finding.folder_name, target_id=self.root_id,
            run=run,
        ))

    def _merge_twins(self, at_root: list[_Folder]) -> None:
        by_therapist: dict[str, list[_Folder]] = defaultdict(list)
        for folder in at_root:
            if folder.therapist_id:
                by_therapist[folder.therapist_id].append(folder)
        for therapist_id, twins in sorted(by_therapist.items()):
            twins.sort(key=_Folder.order_key)
            keeper = twins[0]
            self.folder_of[therapist_id] = _PlannedFolder(keeper.id, keeper.name)
            in_scope = self.snapshot.complete or therapist_id == self.report.therapist_id
            for twin in twins[1:] if in_scope else []:
                def run(ex: _Executor, twin_id=twin.id, keeper_id=keeper.id):
                    return ex.merge(twin_id, keeper_id)

                self.steps.append(_Step(
                    "merge_folders",
                    f"merge folder '{twin.name}' ({twin.id}) of therapist {therapist_id} into "
                    f"its oldest folder '{keeper.name}' ({keeper.id}); copies of the same "
                    "upload collapse to the oldest",
                    therapist_id=therapist_id, item_id=twin.id, item_name=twin.name,
                    target_id=keeper.id, run=run,
                ))

    def _adopt(self, folder: _Folder, moving_out: set[str]) -> bool:
        """Give an id-less folder its therapist's id and label, when after the misplaced files
        leave it holds only that therapist's files and the therapist has no folder yet."""
        staying = [f for f in folder.files if f.id not in moving_out]
        owners = {f.therapist_id for f in staying}
        owner = folder.presumed_therapist_id
        if owner is None or owners != {owner} or self._has_folder(owner):
            return False
        therapist = self.therapist(owner)
        if therapist is None:
            return False
        label = mpf.folder_label(therapist)
        self.folder_of[owner] = _PlannedFolder(folder.id, label)
        leaving = len(folder.files) - len(staying)
        after = f", after {leaving} misplaced file(s) leave it" if leaving else ""

        def run(ex: _Executor, folder_id=folder.id):
            return ex.adopt(folder_id, therapist)

        self.steps.append(_Step(
            "adopt_folder",
            f"adopt id-less folder '{folder.name}' ({folder.id}) for therapist {owner} "
            f"({therapist.first_name} {therapist.last_name}): it holds only their "
            f"{len(staying)} file(s){after}; set {mpf.THERAPIST_ID}={owner} and rename it "
            f"'{label}'",
            therapist_id=owner, item_id=folder.id, item_name=folder.name, target_id=folder.id,
            run=run,
        ))
        return True

    def _has_folder(self, therapist_id: str) -> bool:
        if therapist_id in self.folder_of:
            return True
        if self.snapshot.complete:
            return False
        found = mpf.find_therapist_folders(self.drive, self.root_id, therapist_id)
        if found:
            self.folder_of[therapist_id] = _PlannedFolder(found[0]["id"], found[0]["name"])
        return bool(found)

    def _move(self, file_id: str, file_name: str, owner_id: str, from_id: str,
              from_name: str) -> bool:
        therapist = self.therapist(owner_id)
        if therapist is None:
            self.steps.append(_Step(
                "leave",
                f"leave file '{file_name}' ({file_id}) in '{from_name}' ({from_id}): its "
                f"therapist {owner_id} is not in the therapist directory",
                therapist_id=owner_id, item_id=file_id, item_name=file_name,
            ))
            return False
        if self._has_folder(owner_id):
            target = self.folder_of[owner_id]
            into = f"their folder '{target.name}'" + (f" ({target.id})" if target.id else "")
        else:
            label = mpf.folder_label(therapist)
            self.folder_of[owner_id] = _PlannedFolder(None, label)
            into = f"a new folder '{label}'"

        def run(ex: _Executor):
            return ex.move(file_id, therapist)

        self.steps.append(_Step(
            "move_file",
            f"move file '{file_name}' ({file_id}) of therapist {owner_id} "
            f"({therapist.first_name} {therapist.last_name}) from '{from_name}' into {into}",
            therapist_id=owner_id, item_id=file_id, item_name=file_name,
            target_id=self.folder_of[owner_id].id, run=run,
        ))
        return True

    def _empty_and_delete(self, folder: _Folder, misplaced_ids: set[str]) -> None:
        """Move an id-less folder's remaining stamped files to their owners; delete it once
        nothing is left in it (subfolders have been moved out as nested folders)."""
        kept = []
        for file in sorted(folder.files, key=lambda f: (f.created, f.id)):
            if file.id in misplaced_ids:
                if not self.therapist(file.therapist_id or ""):
                    kept.append(file)  # its owner is unknown: left, and said so, above
                continue
            if not (file.therapist_id and self._move(file.id, file.name, file.therapist_id,
                                                     folder.id, folder.name)):
                kept.append(file)
        unknown_subfolders = [i for i in folder.subfolder_ids if i not in self.snapshot.folders]
        if kept or unknown_subfolders:
            unstamped = sum(1 for f in kept if not f.therapist_id)
            self.steps.append(_Step(
                "leave",
                f"keep id-less folder '{folder.name}' ({folder.id}): it still holds "
                f"{len(kept)} file(s) ({unstamped} without a therapist id)"
                + (f" and {len(unknown_subfolders)} subfolder(s)" if unknown_subfolders else "")
                + " that a person must sort",
                item_id=folder.id, item_name=folder.name,
            ))
            return

        def run(ex: _Executor, folder_id=folder.id):
            return ex.delete_if_empty(folder_id)

        self.steps.append(_Step(
            "delete_folder",
            f"delete id-less folder '{folder.name}' ({folder.id}) once it is empty",
            item_id=folder.id, item_name=folder.name, run=run,
        ))


class _Executor:
    """Runs steps against Drive, re-reading what each step touches: a concurrent sync or an
    earlier step may already have moved it."""

    def __init__(self, drive: DriveResource, root_id: str) -> None:
        self.drive, self.root_id = drive, root_id
        self._folders: dict[str, str] = {}  # therapist id -> folder id, resolved this run
        self.filled: set[str] = set()  # folders files were moved into (collapsed at the end)

    def _current(self, item_id: str) -> dict | None:
        found = self.drive.find_file(item_id, fields=mpf.ITEM_FIELDS)
        return None if found is None or found.get("trashed") else found

    def unnest(self, folder_id: str) -> tuple[str, str, str | None]:
        folder = self._current(folder_id)
        if folder is None:
            return "skipped", "it is gone", None
        parents = folder.get("parents") or []
        if parents == [self.root_id]:
            return "skipped", "already at the MPF root", self.root_id
        self.drive.update_file(
            folder_id,
            add_parents=None if self.root_id in parents else self.root_id,
            remove_parents=[p for p in parents if p != self.root_id],
        )
        return "done", "", self.root_id

    def merge(self, twin_id: str, keeper_id: str) -> tuple[str, str, str | None]:
        twin, keeper = self._current(twin_id), self._current(keeper_id)
        if twin is None or keeper is None:
            return "skipped", "a folder is gone", keeper_id
        moved = mpf.merge_folder_into(self.drive, twin, keeper)
        return "done", f"{moved} item(s) moved", keeper_id

    def adopt(self, folder_id: str, therapist: Therapist) -> tuple[str, str, str | None]:
        folder = self._current(folder_id)
        if folder is None:
            return "skipped", "it is gone", None
        self.drive.update_file(folder_id, name=mpf.folder_label(therapist),
                               app_properties={mpf.THERAPIST_ID: therapist.id})
        # A folder the sync created meanwhile would now be a twin: keep the oldest.
        resolution = mpf.ensure_therapist_folder(self.drive, self.root_id, therapist)
        self._folders[therapist.id] = resolution.folder["id"]
        return "done", "", resolution.folder["id"]

    def move(self, file_id: str, therapist: Therapist) -> tuple[str, str, str | None]:
        if therapist.id not in self._folders:
            resolution = mpf.ensure_therapist_folder(self.drive, self.root_id, therapist)
            self._folders[therapist.id] = resolution.folder["id"]
        target = self._folders[therapist.id]
        file = self._current(file_id)
        if file is None:
            return "skipped", "it is gone", target
        parents = file.get("parents") or []
        if target in parents:
            return "skipped", "already there", target
        try:
            self.drive.update_file(file_id, add_parents=target, remove_parents=parents)
        except DriveError as error:
            if error.status != 404:
                raise
            return "skipped", "it is gone", target
        self.filled.add(target)
        return "done", "", target

    def delete_if_empty(self, folder_id: str) -> tuple[str, str, str | None]:
        if self._current(folder_id) is None:
            return "skipped", "it is gone", None
        left = mpf.list_children(self.drive, folder_id)
        if left:
            return "left", f"not deleted: it still holds {len(left)} item(s)", None
        try:
            self.drive.delete_file(folder_id)
        except DriveError as error:
            if error.status != 404:
                raise
            return "skipped", "it is gone", None
        return "done", "", None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


__all__ = [
    "FINDING_KINDS", "AuditReport", "DuplicateFolder", "Finding", "FolderWithoutId",
    "MisplacedFile", "MissingFile", "NestedFolder", "RepairAction", "audit_mpf",
    "audit_therapist", "repair_mpf", "therapist_resolver",
]
