"""Pure scheduling policy: a snapshot of the cluster in, decisions out.

No I/O, no clock, no database: the server's scheduler loop builds a `Snapshot` from the
store and applies the `Decisions`; `corral sim` builds it from a scenario file
(`load_scenario`) and runs the policy for several cycles (`run_simulation`).

Policies: `FifoPolicy` (oldest first, whole GPUs) and `FairSharePolicy` (quotas,
over-quota weights, reclaim, priorities, fractions, MIG, gangs; docs/scheduler.md).
"""

from corral.scheduler.fairshare import FairSharePolicy
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
from corral.scheduler.scenario import Scenario, ScenarioError, load_scenario, parse_scenario
from corral.scheduler.sim import SimResult, run_simulation

__all__ = [
    "Binding",
    "Decisions",
    "DeviceView",
    "FairSharePolicy",
    "FifoPolicy",
    "JobView",
    "MigSliceView",
    "NodeView",
    "Placement",
    "Policy",
    "Preemption",
    "ProjectShare",
    "ProjectView",
    "Scenario",
    "ScenarioError",
    "SchedulerConfig",
    "SimResult",
    "Snapshot",
    "load_scenario",
    "parse_scenario",
    "run_simulation",
]
