"""Pure scheduling policy: a snapshot of the cluster in, decisions out.

No I/O, no clock, no database: the server's scheduler loop builds a `Snapshot` from the
store and applies the `Decisions`; `corral sim` (issue 3) builds it from a scenario file.
"""

from corral.scheduler.fifo import FifoPolicy
from corral.scheduler.model import (
    Binding,
    Decisions,
    DeviceView,
    JobView,
    MigSliceView,
    NodeView,
    Placement,
    Policy,
    Preemption,
    ProjectShare,
    ProjectView,
    SchedulerConfig,
    Snapshot,
)

__all__ = [
    "Binding",
    "Decisions",
    "DeviceView",
    "FifoPolicy",
    "JobView",
    "MigSliceView",
    "NodeView",
    "Placement",
    "Policy",
    "Preemption",
    "ProjectShare",
    "ProjectView",
    "SchedulerConfig",
    "Snapshot",
]
