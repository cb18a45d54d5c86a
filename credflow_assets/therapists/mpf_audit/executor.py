"""Runs the repair's steps against Drive with the folder rules of `mpf.py`."""

from __future__ import annotations

from credflow_assets.resources.drive import DriveError, DriveResource
from credflow_assets.therapists import mpf
from credflow_assets.therapists.directory import Therapist


class Executor:
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
