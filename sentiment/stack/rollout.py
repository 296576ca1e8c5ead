"""`sentiment model rollout`: move a running local stack to another model version with no failed
request and no answer from the wrong model.

The order (the cluster runbook in the README follows it too):
1. add the version to the model repository and have Triton serve it beside the current one
   (its model-control API, on Triton's private port; both versions loaded);
2. switch the transformer: it builds a client pinned to the new version, waits until Triton
   serves it, replays its sample of recent texts through it (cache warm, shadow report), then
   answers every new request with it (`transformer/core/switch.py`; a signal and a file, no route);
3. retire the old version from Triton (its files stay in the repository: rolling back is the same
   command with `--to-version <old>`).
A failure before step 3 puts Triton back to the old version alone; the transformer never switched.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

from sentiment.model.export_options import ExportOptions
from sentiment.model.triton_repository import MODEL_NAME, bundle_dir, serve, served_versions, versions
from sentiment.stack.state import StackState


class RolloutError(RuntimeError):
    """The rollout stopped; the message says where and what state the stack is in."""


@dataclass(frozen=True)
class RolloutOptions:
    logs: Path
    checkpoint: Path | None = None      # export this checkpoint as the next version
    to_version: str | None = None       # or move to a version already in the repository (rollback)
    export: ExportOptions = field(default_factory=ExportOptions)
    timeout_s: float = 180.0


@dataclass
class RolloutResult:
    from_version: str
    to_version: str
    report: dict
    seconds: dict[str, float] = field(default_factory=dict)


def _http(method: str, url: str, timeout: float = 60.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError as error:
        return 0, str(error).encode()


class TritonControl:
    """Triton's model-control API on its private HTTP port (never the public transformer)."""

    def __init__(self, http_port: int):
        self.base = f"http://127.0.0.1:{http_port}"

    def load(self) -> None:
        """Triton re-reads the model's configuration: it loads the versions it now names and unloads
        the others; versions it keeps serve on through the load."""
        status, body = _http("POST", f"{self.base}/v2/repository/models/{MODEL_NAME}/load", timeout=300)
        if status != 200:
            raise RolloutError(f"Triton refused to load the model ({status}): {body.decode(errors='replace')[:300]}")

    def version_ready(self, version: str) -> bool:
        return _http("GET", f"{self.base}/v2/models/{MODEL_NAME}/versions/{version}/ready", timeout=5)[0] == 200


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if condition():
            return time.monotonic() - started
        time.sleep(0.1)
    raise RolloutError(f"{what} did not happen within {timeout_s:.0f} s")


def serving_transformer_version(state: StackState) -> str:
    status, body = _http("GET", f"{state.transformer_url}/v2/models/{MODEL_NAME}", timeout=5)
    if status != 200:
        raise RolloutError(f"the transformer at {state.transformer_url} does not answer ({status})")
    return json.loads(body)["versions"][0]


def _target_version(options: RolloutOptions, state: StackState, say: Callable[[str], None]) -> str:
    """Step 1a: the version to move to, exported first when it is a new checkpoint."""
    repository = state.repository
    if options.checkpoint is not None:
        from sentiment.model.export import export

        version = str(max((int(v) for v in versions(repository)), default=0) + 1)
        say(f"exporting {options.checkpoint} as version {version} of {repository} ...")
        export(options.checkpoint, repository, options.export, version=version)
        return version
    version = str(options.to_version)
    if not (bundle_dir(repository, version) / "bundle.json").is_file():
        raise RolloutError(
            f"version {version} is not in {repository}: versions there are {', '.join(versions(repository))}"
        )
    return version


def _switch_transformer(state: StackState, target: str, logs: Path, timeout_s: float) -> dict:
    """Step 2: a signal and a file; the transformer writes its report when it has switched (or not)."""
    report_file = logs / f"rollout-{datetime.now().strftime('%Y%m%d-%H%M%S')}-v{target}.json"
    report_file.unlink(missing_ok=True)
    state.control_file.write_text(json.dumps({"bundle": str(bundle_dir(state.repository, target)),
                                              "report": str(report_file)}) + "\n")
    try:
        os.kill(state.transformer_pid, signal.SIGHUP)
    except ProcessLookupError:
        raise RolloutError(
            f"the transformer (PID {state.transformer_pid}) is gone: is `sentiment up` running?"
        ) from None
    _wait(report_file.is_file, timeout_s, "the transformer's switch report")
    return json.loads(report_file.read_text())


def rollout(options: RolloutOptions, say: Callable[[str], None] = print) -> RolloutResult:
    state = StackState.read(options.logs)
    repository = state.repository
    triton = TritonControl(state.triton.http)
    current = serving_transformer_version(state)
    started = time.monotonic()
    target = _target_version(options, state, say)
    if target == current:
        raise RolloutError(f"the transformer already serves version {current}")
    timings: dict[str, float] = {}
    say(f"Triton: serving versions {current} and {target} ...")
    serve(repository, sorted({current, target}, key=int))
    triton.load()
    timings["triton_load_s"] = _wait(lambda: triton.version_ready(target), options.timeout_s, f"version {target} ready")
    say(f"transformer: switching from version {current} to {target} (replaying recent texts) ...")
    report = _switch_transformer(state, target, options.logs, options.timeout_s)
    if report.get("status") != "switched":
        serve(repository, [current])
        triton.load()
        raise RolloutError(f"the transformer did not switch ({report.get('error', report.get('status'))}); "
                           f"Triton serves version {current} alone again")
    timings["switch_s"] = float(report.get("seconds", 0.0))
    say(f"Triton: retiring version {current} (its files stay: roll back with --to-version {current}) ...")
    serve(repository, [target])
    triton.load()
    timings["retire_s"] = _wait(
        lambda: not triton.version_ready(current), options.timeout_s, f"version {current} unloaded"
    )
    timings["total_s"] = round(time.monotonic() - started, 2)
    assert served_versions(repository) == [target]
    return RolloutResult(current, target, report, timings)


def describe(result: RolloutResult) -> str:
    """The console summary, with the shadow report of the replayed sample."""
    shadow = result.report.get("shadow", {})
    lines = [f"now serving version {result.to_version} (was {result.from_version}); "
             + ", ".join(f"{name.removesuffix('_s')} {value:.1f} s" for name, value in result.seconds.items()),
             f"shadow report on {shadow.get('sample', 0)} recently served texts: {shadow.get('flips', 0)} labels flip "
             f"between version {result.from_version} and {result.to_version}"]
    for change in shadow.get("largest_changes", []):
        before, after = change["before"], change["after"]
        lines.append(f"  text {change['text']}: {before['label']} {before['score']:.3f} -> {after['label']} "
                     f"{after['score']:.3f} (score of {before['label']} changed by {change['change']:.3f})")
    return "\n".join(lines)
