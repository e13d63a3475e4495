"""Human output of the models: what the commands print without ``--json``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from buildref.cli.common import when
from buildref.models import (
    Build,
    DerivationInfo,
    Event,
    Lookup,
    Match,
    Recorded,
    RecordedBy,
    RefMove,
    Status,
    Why,
    WhyPath,
)


def _count(n: int) -> str:
    return "?" if n < 0 else str(n)


def status(s: Status) -> None:
    e, since, db, last, lag = s.events, s.since_start, s.database, s.last_event, s.index_lag
    size = "size unknown" if db.bytes < 0 else f"{db.bytes} bytes"
    behind = f"{lag.events} event(s) behind, the oldest {lag.seconds:.0f} s" if lag.events else "up to date"
    print("\n".join([
        f"service      buildref {s.version}, pid {s.pid}, up {s.uptime:.0f} s, builder {s.builder}",
        f"queue        {s.queue_depth} event(s) waiting",
        f"events       {e.received} received, {e.indexed} indexed, {e.failed} failed, {e.pending} pending",
        f"since start  {since.received} received, {since.indexed} indexed, {since.failed} failed",
        f"spool        {s.spool_files} file(s)",
        f"database     {db.path} ({size}): {_count(db.derivations)} derivations, "
        f"{_count(db.outputs)} outputs, "
        f"{_count(db.builds)} builds",
        f"index        {behind}" + ("" if lag.reachable else f"; unreachable: {lag.error}"),
        "last event   "
        + ("-" if last is None else f"{when(last.received_at)} {last.state.value} {last.drv_path}"),
    ]))


def _outputs(outputs: dict[str, str]) -> str:
    return " ".join(f"{name}={path}" for name, path in sorted(outputs.items()))


def _cached(b: Build) -> str:
    """Where the build can be fetched from: the caches holding it, and those that cannot say."""
    held = "".join(f"  cached in {url}" for url in b.caches)
    return held + "".join(f"  (cannot tell for {url} now)" for url in b.caches_unknown)


def builds(found: Sequence[Build]) -> None:
    for b in found:
        outputs = _outputs(b.outputs) or "(no outputs in store)"
        print(f"{when(b.built_at)}  {b.builder or '-'}  {b.drv_path}  {outputs}{_cached(b)}")


def events(found: Sequence[Event]) -> None:
    for e in found:
        detail = f": {e.error}" if e.error else ""
        print(f"{when(e.received_at)}  {e.state.value:<8} {e.source:<6} {e.drv_path}{detail}")


def show(d: DerivationInfo) -> None:
    print(f"{d.drv_path}\n  name     {d.name}\n  system   {d.system}")
    if d.fixed is not None:
        print(f"  fixed    {d.fixed.mode} {d.fixed.hash or ''}".rstrip())
    for name, path in d.outputs.items():
        print(f"  output   {name} = {path or '(known once built)'}")
    for path, outs in d.input_drvs.items():
        print(f"  input    {path} ({', '.join(outs)})")
    for path in d.input_srcs:
        print(f"  source   {path}")
    for b in d.builds:
        outputs = _outputs(b.outputs) or "(no outputs in store)"
        print(f"  built    {when(b.built_at)}  {b.builder or '-'}  {outputs}")


def recorded(r: Recorded) -> None:
    for ref, rev in r.refs.items():
        print(f"{rev}\t{ref}")
    print(f"{len(r.moved)} ref move(s) recorded; {r.revisions_indexed} new revision(s), "
          f"{r.sources_indexed} source path(s) indexed", file=sys.stderr)


def refs(history: Sequence[RefMove]) -> None:
    for move in history:
        print(f"{when(move.seen_at)}  {move.rev or '(deleted)'}  {move.ref}")


def lookup(r: Lookup) -> None:
    print(f"{r.repository} {r.ref} = {r.rev}")
    if r.fallback:
        print(f"no build of {r.rev[:12]} yet; newest built ancestor {r.fallback.rev} "
              f"({r.fallback.commits_behind} commit(s) behind)")
    for b in r.builds:
        state = "" if b.valid else "  (not in this machine's store)"
        print(f"distance {b.distance}  {b.builder or '-'}  {b.drv_path}  {_outputs(b.outputs)}{state}"
              f"{_cached(b)}")
    if not r.builds:
        print("no builds found")


def who_recorded(by: RecordedBy) -> str:
    if by == "config":
        return "configured"
    return "recorded by an unknown user" if by is None else f"recorded by uid {by}"


def why(r: Why) -> None:
    if isinstance(r, WhyPath):
        print(f"{r.path} is output '{r.output}' of {r.drv_path} (built {when(r.built_at)}"
              f" by {r.builder or 'this machine'})")
        for url in r.caches:
            print(f"cached in {url}")
        for url in r.caches_unknown:
            print(f"cannot tell now whether {url} holds it")
    for s in r.sources:
        where = f"/{s.subdir}" if s.subdir else ""
        match = "" if s.match is Match.EXACT else f" {s.match.value} match"
        print(f"{s.repository}{where} at {s.rev} ({', '.join(s.refs) or 'no ref'}): {s.store_path}"
              f"  [{who_recorded(s.recorded_by)}{match}]")
    if not r.sources:
        print("no revision found")
    if r.not_searched:
        print(f"not searched through (a revision there may be missing): {', '.join(r.not_searched)}")
    if isinstance(r, WhyPath):
        for pin in r.locked_inputs:
            print(f"pinned by {pin.lock_file} input '{pin.input}': {pin.repository} at {pin.rev or '-'}")
    else:
        for b in r.builds:
            print(f"used by {b.drv_path} (distance {b.distance})")
