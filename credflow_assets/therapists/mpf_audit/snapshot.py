"""What the audit saw: the MPF's folders and files, read from Drive by the therapist id each one
carries (`appProperties`), never by name.

Cost: `walk` lists the tree level by level, the children of up to `PARENTS_PER_QUERY` folders
per `files.list` query (about 20 with Drive's 33-character ids, see `MAX_QUERY_CHARS`), each
query paged `LIST_PAGE_SIZE` at a time: a thousand folders cost about fifty requests. The
`Locator` finds where a single item sits (its chain of folders up to the MPF root) with one
`files.get` per folder not seen before.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from credflow_assets.resources.drive import (
    FOLDER_MIME,
    DriveResource,
    escape_query_literal,
)
from credflow_assets.therapists import mpf

LIST_PAGE_SIZE = 1000  # Drive's maximum page size for files.list
PARENTS_PER_QUERY = 40  # at most this many `'<id>' in parents` terms OR-ed in one `q` …
# … and the URL-encoded `q` at most this long: googleapiclient turns a GET whose URL passes 2,048
# characters into a POST with a method override, which the local Drive server does not take.
MAX_QUERY_CHARS = 1200
_MAX_DEPTH = 64  # a guard for the ancestor walk; real MPF trees are a few levels deep

_esc = escape_query_literal


@dataclass
class File:
    """A file in the MPF, with the identity credflow stamped on it (none on the old system's)."""

    id: str
    name: str
    parent_id: str
    therapist_id: str | None
    source: str | None
    rendition: str | None
    created: str

    @classmethod
    def from_item(cls, item: dict, parent_id: str) -> File:
        properties = item.get("appProperties") or {}
        return cls(
            id=item["id"], name=item.get("name", ""), parent_id=parent_id,
            therapist_id=properties.get(mpf.THERAPIST_ID) or None,
            source=properties.get(mpf.SOURCE), rendition=properties.get(mpf.RENDITION),
            created=item.get("createdTime", ""),
        )


@dataclass
class Folder:
    """A folder in the MPF, where it sits (its chain from the MPF-root folder) and what it holds."""

    id: str
    name: str
    parent_id: str
    therapist_id: str | None
    created: str
    depth: int  # 0: a direct child of the MPF root
    path: tuple[str, ...]  # names from the MPF-root folder down to this folder
    ancestor_ids: tuple[str, ...]  # ids from the MPF-root folder down to the parent
    ancestor_therapist_ids: tuple[str | None, ...]
    files: list[File] = field(default_factory=list)
    subfolder_ids: list[str] = field(default_factory=list)

    @classmethod
    def from_item(cls, item: dict, chain: list[dict]) -> Folder:
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

    def child(self, item: dict) -> Folder:
        return Folder(
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
class Snapshot:
    """Everything one audit listed: `repair_mpf` plans from it without listing Drive again."""

    root_id: str
    complete: bool  # True: the whole MPF was walked (audit_mpf); False: one therapist's part
    folders: dict[str, Folder] = field(default_factory=dict)
    loose_files: list[File] = field(default_factory=list)  # stamped files right in the root

    def files(self) -> Iterator[File]:
        for folder in self.folders.values():
            yield from folder.files
        yield from self.loose_files

    def root_folders(self, therapist_id: str) -> list[Folder]:
        return sorted((f for f in self.folders.values()
                       if f.depth == 0 and f.therapist_id == therapist_id), key=Folder.order_key)


def list_items(drive: DriveResource, q: str) -> Iterator[dict]:
    """Every file and folder `q` finds, with the fields the audit reads, in the largest pages."""
    return drive.list_files(q, fields=mpf.ITEM_FIELDS, page_size=LIST_PAGE_SIZE)


def _parent_queries(folders: list[Folder]) -> Iterator[tuple[dict[str, Folder], str]]:
    """`({folder id: folder}, q)` listing the children of up to `PARENTS_PER_QUERY` folders at
    once, each `q` short enough for a GET."""
    from urllib.parse import quote_plus

    def query(terms: list[str]) -> str:
        return f"({' or '.join(terms)}) and trashed = false"

    batch: dict[str, Folder] = {}
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


def walk(drive: DriveResource, snapshot: Snapshot, starts: list[Folder]) -> None:
    """Add `starts` and everything under them to the snapshot, one tree level at a time."""
    frontier = [folder for folder in starts if folder.id not in snapshot.folders]
    for folder in frontier:
        snapshot.folders[folder.id] = folder
    while frontier:
        next_frontier: list[Folder] = []
        for by_id, q in _parent_queries(frontier):
            for item in list_items(drive, q):
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
                    parent.files.append(File.from_item(item, parent_id))
        frontier = next_frontier


def list_shallow(drive: DriveResource, folder: Folder) -> None:
    """A folder's own files and subfolder ids, without walking the subfolders."""
    for item in list_items(drive, f"'{_esc(folder.id)}' in parents and trashed = false"):
        if item.get("mimeType") == FOLDER_MIME:
            folder.subfolder_ids.append(item["id"])
        else:
            folder.files.append(File.from_item(item, folder.id))


class Locator:
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

