"""Inference across peers: the requester side and the stage side.

`task` is the signed task a requester sends along its route; `planner` picks the route from the
peer table (shortest estimated latency, m replicas per stage, TEE preference, allow/deny lists).
The stage server and the requester's sessions build on these and on `p2pinfer.models`.
"""

from .planner import Candidate as Candidate
from .planner import NoRouteError as NoRouteError
from .planner import PlanRequest as PlanRequest
from .planner import least_covered_span as least_covered_span
from .planner import plan_route as plan_route
from .task import StagePlan as StagePlan
from .task import Task as Task
from .task import TaskError as TaskError
