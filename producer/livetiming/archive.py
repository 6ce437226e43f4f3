"""F1's public static archive: every past session, one `.jsonStream` file per topic.

`<base>/<year>/Index.json` lists the year's meetings and their sessions, each
with a `Path`; `<base>/<Path>Index.json` lists that session's feeds. We
download each feed's stream into a folder that `replay` reads.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp

from broker.errors import SlipstreamError
from broker.progress import Progress

log = logging.getLogger("slipstream.livetiming")

DEFAULT_ARCHIVE_URL = "https://livetiming.formula1.com/static"


class ArchiveError(SlipstreamError):
    pass


async def fetch_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as response:
        if response.status != 200:
            raise ArchiveError(f"{url}: HTTP {response.status}")
        text = (await response.read()).decode("utf-8-sig")  # F1 serves a byte-order mark
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArchiveError(f"{url} is not JSON: {exc}") from None


async def year_index(http: aiohttp.ClientSession, base: str, year: int) -> list[dict[str, Any]]:
    index = await fetch_json(http, f"{base}/{year}/Index.json")
    meetings = index.get("Meetings") if isinstance(index, dict) else None
    if not isinstance(meetings, list):
        raise ArchiveError(f"{base}/{year}/Index.json has no Meetings list")
    return meetings


def describe_year(meetings: list[dict[str, Any]]) -> str:
    lines = []
    for meeting in meetings:
        sessions = ", ".join(str(s.get("Name")) for s in meeting.get("Sessions", []))
        lines.append(f"{meeting.get('Name')} ({meeting.get('Location', '?')}): {sessions}")
    return "\n".join(lines)


def find_session(meetings: list[dict[str, Any]], event: str, session: str) -> str:
    """The archive path of `session` at the meeting matching `event` (case-insensitive)."""
    wanted = event.lower()
    matches = [m for m in meetings
               if wanted in str(m.get("Name", "")).lower()
               or wanted in str(m.get("Location", "")).lower()]
    if not matches:
        raise ArchiveError(f"no meeting matches {event!r}; see `archive --list YEAR`")
    if len(matches) > 1:
        names = ", ".join(repr(m.get("Name")) for m in matches)
        raise ArchiveError(f"{event!r} matches several meetings ({names}): be more precise")
    for candidate in matches[0].get("Sessions", []):
        if str(candidate.get("Name", "")).lower() == session.lower():
            path = candidate.get("Path")
            if isinstance(path, str):
                return path
    names = ", ".join(repr(s.get("Name")) for s in matches[0].get("Sessions", []))
    raise ArchiveError(f"{matches[0].get('Name')} has no session {session!r} (it has {names})")


async def download_session(http: aiohttp.ClientSession, base: str, path: str,
                           folder: Path) -> Path:
    """Every feed stream of the session at `path` into `folder`; returns the folder."""
    index = await fetch_json(http, f"{base}/{path}Index.json")
    feeds = index.get("Feeds") if isinstance(index, dict) else None
    if not isinstance(feeds, dict):
        raise ArchiveError(f"{base}/{path}Index.json has no Feeds")
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    with Progress("download", len(feeds), "feeds", log_interval_s=0) as progress:
        for topic, feed in sorted(feeds.items()):
            stream = feed.get("StreamPath") if isinstance(feed, dict) else None
            if not isinstance(stream, str):
                progress.advance(1)
                continue
            async with http.get(f"{base}/{path}{stream}") as response:
                if response.status != 200:
                    log.warning("skipping %s: HTTP %d", topic, response.status)
                    progress.advance(1)
                    continue
                data = await response.read()
            await asyncio.to_thread((folder / f"{topic}.jsonStream").write_bytes, data)
            progress.advance(1, f"{topic} ({len(data):,} bytes)")
    return folder
