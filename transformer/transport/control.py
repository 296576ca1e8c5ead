"""The private control channel of a local rollout: a signal and a file, never a network route
(SIGHUP also re-reads the API keys file, see `transformer.api_keys`).

`sentiment model rollout` writes `{"bundle": "<dir>", "report": "<file>"}` to the transformer's
`--control_file` and sends SIGHUP; the transformer switches to that bundle's model version
(`ServingCore.switch`) and writes its report (status, versions, timing, shadow comparison) to the
report file. In a cluster, a rollout replaces pods instead (README, "Roll out a new model version").
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from pathlib import Path

from transformer.core.service import ServingCore

log = logging.getLogger(__name__)


async def switch_from_control_file(core: ServingCore, control_file: Path) -> None:
    report_file = None
    try:
        request = json.loads(control_file.read_text())
        report_file = Path(request["report"])
        report = await core.switch(Path(request["bundle"]))
    except Exception as error:  # the report must say what went wrong, the server must go on
        log.exception("switch requested through %s failed", control_file)
        report = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
    if report_file is not None:
        scratch = report_file.with_suffix(".partial")
        scratch.write_text(json.dumps(report, indent=2) + "\n")
        scratch.replace(report_file)  # whole or absent: the waiting command never reads half a report


def install_hangup_signal(core: ServingCore, control_file: str | None) -> None:
    """SIGHUP -> read the API keys file again (when API_KEYS is set) and switch to the bundle named
    in `control_file` (when there is one); no handler when neither is configured."""
    if not control_file and core.api_keys is None:
        return
    loop = asyncio.get_running_loop()

    def on_hangup() -> None:
        if core.api_keys is not None:
            core.api_keys.reload("SIGHUP")
        if control_file:
            task = loop.create_task(switch_from_control_file(core, Path(control_file)))
            core.background.add(task)
            task.add_done_callback(core.background.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hangup)
