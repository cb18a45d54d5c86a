"""The MPF audit and its repair: find what the old, name-based system left behind, then fix it.

The source system found therapist folders by name, so files landed in the wrong therapist's
folder (Lamb's files in `Lambert, Nicholas`), folders were created inside other folders ("nesting
dolls"), twins appeared, and some uploads never reached Drive at all. The audit reads the MPF
(never by name: by the `credflow_therapist_id` appProperty on folders and files) and reports each
problem as a finding a person can act on; the repair moves things into place with the folder rules
of `mpf.py`.

Read top to bottom:

    findings.py   what the audit reports: a dataclass per kind of finding, and `AuditReport`
    snapshot.py   what the audit saw: the MPF tree as read from Drive, and what reading it costs
    audit.py      the rules, from a snapshot to findings: `audit_mpf`, `audit_therapist`
    repair.py     the repair's plan from findings and snapshot, and `repair_mpf`, which runs it
    executor.py   each repair step against Drive, re-reading what it touches
"""

from credflow_assets.therapists.mpf_audit.audit import (
    audit_mpf,
    audit_therapist,
    therapist_resolver,
)
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
from credflow_assets.therapists.mpf_audit.repair import RepairAction, repair_mpf

__all__ = [
    "FINDING_KINDS", "AuditReport", "DuplicateFolder", "Finding", "FolderWithoutId",
    "MisplacedFile", "MissingFile", "NestedFolder", "RepairAction", "audit_mpf",
    "audit_therapist", "repair_mpf", "therapist_resolver",
]
