"""The file events that drive a watch session: watchfiles on the folders of the watched files.

Folders, not the files themselves: editors save by writing a new file and renaming it over the old one,
and a watch on the old file would end with it. The events are filtered down to the session's files, and
when an edit makes the workflow read other input files, the watch starts again on their folders.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

from flowrun.watch.session import Outcome, Session


def folders(paths: set[Path]) -> set[Path]:
    """The folders that hold `paths` (those that exist)."""
    return {p.parent for p in paths if p.parent.is_dir()}


def watch(session: Session, report: Callable[[Outcome], None], *, stop: threading.Event | None = None,
          step_ms: int = 50) -> None:
    """Render once, then again after every save of a watched file, handing each outcome to `report`, until
    `stop` is set (or Ctrl-C: KeyboardInterrupt propagates, as from `flowrun run`). `step_ms`: how long the
    folder stays quiet before a burst of events counts as one save."""
    import watchfiles

    from flowrun.errors import UsageError

    if not session.path.resolve().parent.is_dir():
        raise UsageError(f"cannot watch {session.path}: there is no folder {session.path.parent}")
    report(session.step())
    while stop is None or not stop.is_set():
        watched = session.watched()
        where = folders(watched)

        def ours(change, path: str) -> bool:
            return Path(path).resolve() in watched

        restarted = False
        # an empty set every half second: the first one means the watch is in place, so a save it may have
        # missed (made while the last step ran) shows in the files' stamps
        for changes in watchfiles.watch(*where, watch_filter=ours, step=step_ms, stop_event=stop, recursive=False,
                                        yield_on_timeout=True, rust_timeout=500):
            if changes:
                outcome = session.on_change(path for _, path in changes)
            else:
                outcome = session.step() if session.stale() else None
            if outcome is not None:
                report(outcome)
            if session.watched() != watched:
                restarted = True
                break
        if not restarted:
            return


def watch_file(session: Session, report: Callable[[Outcome], None], *, serve: int | None = None,
               served: Callable[[str], None] | None = None, stop: threading.Event | None = None) -> None:
    """`watch`, and with `serve` (a port; 0: a free one) the page on 127.0.0.1 that shows the outputs and
    the samplers' previews; `served` gets its URL once it listens."""
    if serve is None:
        return watch(session, report, stop=stop)
    from flowrun.errors import UsageError
    from flowrun.watch.serve import Fanout, PageServer, PreviewEvents, WatchState

    state = WatchState(str(session.path))
    listeners = [session.events] if session.events is not None else []
    cells = lambda: [{"label": c.label, "values": c.values} for c in session.resolved.cells]  # noqa: E731
    session.events = Fanout(*listeners, PreviewEvents(state, cells))
    try:
        server = PageServer(state, serve)
    except OSError as exc:
        raise UsageError(f"cannot serve the page on 127.0.0.1:{serve}: {exc.strerror or exc}") from None

    def both(outcome: Outcome) -> None:
        state.outcome(outcome)
        report(outcome)

    with server:
        if served is not None:
            served(server.url)
        watch(session, both, stop=stop)
