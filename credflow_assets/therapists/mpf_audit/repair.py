"""The repair: findings plus the snapshot the audit saw → steps, planned first (the dry run
says exactly what the real run will do), then run against Drive by the executor (executor.py),
which re-reads what each step touches.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from credflow_assets.resources.drive import DriveResource
from credflow_assets.therapists import mpf
from credflow_assets.therapists.directory import Therapist
from credflow_assets.therapists.mpf_audit.executor import Executor
from credflow_assets.therapists.mpf_audit.findings import (
    AuditReport,
    FolderWithoutId,
    MisplacedFile,
    MissingFile,
    NestedFolder,
)
from credflow_assets.therapists.mpf_audit.snapshot import Folder, Snapshot

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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RepairAction:
        """The action `to_dict` gave (e.g. read back from a repair run's metadata)."""
        return cls(**{name: value for name, value in data.items() if name != "changes_drive"})

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
    run: Callable[[Executor], tuple[str, str, str | None]] | None = None

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
    executor = Executor(drive, root_id)
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
        self.snapshot: Snapshot = report.snapshot  # type: ignore[assignment]
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
        id_less = sorted((folders[i] for i in reported), key=Folder.order_key)
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

        def run(ex: Executor) -> tuple[str, str, str | None]:
            return ex.unnest(folder_id)

        self.steps.append(_Step(
            "unnest_folder",
            f"move folder '{' / '.join(finding.path)}' ({folder_id}) out of "
            f"'{finding.parent_name}' to the MPF root",
            therapist_id=finding.therapist_id or finding.presumed_therapist_id,
            item_id=folder_id, item_name=finding.folder_name, target_id=self.root_id,
            run=run,
        ))

    def _merge_twins(self, at_root: list[Folder]) -> None:
        by_therapist: dict[str, list[Folder]] = defaultdict(list)
        for folder in at_root:
            if folder.therapist_id:
                by_therapist[folder.therapist_id].append(folder)
        for therapist_id, twins in sorted(by_therapist.items()):
            twins.sort(key=Folder.order_key)
            keeper = twins[0]
            self.folder_of[therapist_id] = _PlannedFolder(keeper.id, keeper.name)
            in_scope = self.snapshot.complete or therapist_id == self.report.therapist_id
            for twin in twins[1:] if in_scope else []:
                def run(ex: Executor, twin_id=twin.id, keeper_id=keeper.id):
                    return ex.merge(twin_id, keeper_id)

                self.steps.append(_Step(
                    "merge_folders",
                    f"merge folder '{twin.name}' ({twin.id}) of therapist {therapist_id} into "
                    f"its oldest folder '{keeper.name}' ({keeper.id}); copies of the same "
                    "upload collapse to the oldest",
                    therapist_id=therapist_id, item_id=twin.id, item_name=twin.name,
                    target_id=keeper.id, run=run,
                ))

    def _adopt(self, folder: Folder, moving_out: set[str]) -> bool:
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

        def run(ex: Executor, folder_id=folder.id):
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

        def run(ex: Executor):
            return ex.move(file_id, therapist)

        self.steps.append(_Step(
            "move_file",
            f"move file '{file_name}' ({file_id}) of therapist {owner_id} "
            f"({therapist.first_name} {therapist.last_name}) from '{from_name}' into {into}",
            therapist_id=owner_id, item_id=file_id, item_name=file_name,
            target_id=self.folder_of[owner_id].id, run=run,
        ))
        return True

    def _empty_and_delete(self, folder: Folder, misplaced_ids: set[str]) -> None:
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

        def run(ex: Executor, folder_id=folder.id):
            return ex.delete_if_empty(folder_id)

        self.steps.append(_Step(
            "delete_folder",
            f"delete id-less folder '{folder.name}' ({folder.id}) once it is empty",
            item_id=folder.id, item_name=folder.name, run=run,
        ))

