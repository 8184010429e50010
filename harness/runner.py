"""Headless graph runner: validate an API-format workflow with the host's own prompt
validation and execute it with the host's own executor, in this process."""
import asyncio
import inspect
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path


class GraphError(RuntimeError):
    """A workflow failed validation or execution; the message is meant for a person."""


@dataclass
class GraphResult:
    ui: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)

    def output(self, node_id, slot=0):
        """The value a node produced on one of its output slots (the first, for a list output)."""
        return self.outputs[str(node_id)][slot][0]

    def output_list(self, node_id, slot=0):
        """Every value of a list output (one per group, per photo, ...)."""
        return list(self.outputs[str(node_id)][slot])


class _ServerStub:
    """What PromptExecutor needs of the web server when nobody is listening."""
    client_id = None
    last_node_id = None
    last_prompt_id = None
    sockets_metadata = {}

    def send_sync(self, event, data, sid=None):
        pass


class _NoCacheLimits(dict):
    """cache_args for a CLASSIC cache: every size limit the host reads is 0 (none).

    Hosts add keys over time (0.33 reads "ram_inactive" too), so any key it asks for is 0.
    """

    def __missing__(self, key):
        return 0


def cached_output(cache, node_id):
    """A node's entry in the executor's output cache, whether the host's lookup is sync or async."""
    lookup = getattr(cache, "get_local", None) or cache.get
    entry = lookup(node_id)
    return asyncio.run(entry) if inspect.isawaitable(entry) else entry


def load_workflow(workflow):
    if isinstance(workflow, (str, Path)):
        return json.loads(Path(workflow).read_text())
    return workflow


def format_validation_error(error, node_errors, prompt):
    lines = [f"workflow failed validation: {error.get('message', '')}"]
    if error.get("details") and not node_errors:
        lines.append(f"  {error['details']}")
    for node_id, info in node_errors.items():
        class_type = info.get("class_type") or prompt.get(node_id, {}).get("class_type", "?")
        for err in info.get("errors", []):
            detail = f": {err['details']}" if err.get("details") else ""
            lines.append(f"  node {node_id} ({class_type}): {err['message']}{detail}")
    return "\n".join(lines)


def run_graph(workflow, executor=None):
    """Validate and execute an API-format workflow (dict or JSON path); raise GraphError on failure."""
    import execution

    prompt = load_workflow(workflow)
    prompt_id = str(uuid.uuid4())
    ok, error, good_outputs, node_errors = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
    if not ok:
        raise GraphError(format_validation_error(error, node_errors, prompt))
    executor = executor or execution.PromptExecutor(
        _ServerStub(), cache_type=execution.CacheType.CLASSIC, cache_args=_NoCacheLimits())
    executor.execute(prompt, prompt_id, {}, good_outputs)
    for event, data in executor.status_messages:
        if event == "execution_error":
            raise GraphError(f"node {data['node_id']} ({data['node_type']}) failed: "
                             f"{data['exception_type']}: {data['exception_message']}")
        if event == "execution_interrupted":
            raise GraphError(f"execution interrupted at node {data['node_id']} ({data['node_type']})")
    result = GraphResult(ui=executor.history_result["outputs"])
    for node_id in prompt:
        entry = cached_output(executor.caches.outputs, node_id)
        if entry is not None:
            result.outputs[node_id] = entry.outputs
    return result
