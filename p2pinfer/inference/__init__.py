"""Inference across peers: the requester side and the stage side.

`task` is the signed task a requester sends along its route; `planner` picks the route from the
peer table (shortest estimated latency, m replicas per stage, TEE preference, allow/deny lists);
`stage` serves a layer span to routes that name this peer; `client` is the requester (split
learning head and tail, one attempt loop with a strategy per task mode, one `RequestOutcome` per
request); `hop` is how an activation crosses one hop; `service` ties them to a node and turns
outcomes into the result values users get (`Generation`, `Embeddings`). Wire protocol: protocols/stage.md.
"""

from .client import ClientSettings as ClientSettings
from .client import Embedded as Embedded
from .client import InferenceClient as InferenceClient
from .client import InferenceError as InferenceError
from .client import PromptTooLong as PromptTooLong
from .client import RequestOutcome as RequestOutcome
from .client import RequestSettings as RequestSettings
from .client import StageFailure as StageFailure
from .planner import Candidate as Candidate
from .planner import NoRouteError as NoRouteError
from .planner import PlanRequest as PlanRequest
from .planner import least_covered_span as least_covered_span
from .planner import plan_route as plan_route
from .service import Embeddings as Embeddings
from .service import Generation as Generation
from .service import GenerationStream as GenerationStream
from .service import InferenceService as InferenceService
from .service import TokenEvent as TokenEvent
from .stage import StageServer as StageServer
from .task import StagePlan as StagePlan
from .task import Task as Task
from .task import TaskError as TaskError
