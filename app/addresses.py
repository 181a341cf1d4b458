"""Email addresses in the subscriber's words: why one is refused, and a likely typo's fix.

The typo hint follows mailcheck's method (the closest well-known domain, else the
closest second-level name and top-level domain, by sift3 distance) over the lists
published in the npm package @zootools/email-spell-checker (MIT), vendored in
app/data/email_domains.json with their source and licence.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

DOMAINS_FILE = Path(__file__).parent / "data" / "email_domains.json"
#: How far sift3 looks ahead for a matching character, as in mailcheck.
_MAX_OFFSET = 5


@dataclass(frozen=True)
class DomainLists:
    """Well-known mail domains, second-level names and top-level domains, with thresholds."""

    domains: tuple[str, ...]
    second_level: tuple[str, ...]
    top_level: tuple[str, ...]
    domain_threshold: float
    second_level_threshold: float
    top_level_threshold: float


@lru_cache(maxsize=1)
def domain_lists() -> DomainLists:
    """The vendored lists, read once."""
    data = json.loads(DOMAINS_FILE.read_text(encoding="utf-8"))
    limits = data["thresholds"]
    return DomainLists(
        domains=tuple(data["domains"]),
        second_level=tuple(data["second_level_domains"]),
        top_level=tuple(data["top_level_domains"]),
        domain_threshold=limits["domain"],
        second_level_threshold=limits["second_level"],
        top_level_threshold=limits["top_level"],
    )


def sift3(first: str, second: str) -> float:
    """Sift3 string distance (Siderite's, as mailcheck uses it): 0 for equal strings."""
    if not first or not second:
        return len(first or second)
    c = offset1 = offset2 = lcs = 0
    while c + offset1 < len(first) and c + offset2 < len(second):
        if first[c + offset1] == second[c + offset2]:
            lcs += 1
        else:
            offset1 = offset2 = 0
            for i in range(_MAX_OFFSET):
                if c + i < len(first) and first[c + i] == second[c]:
                    offset1 = i
                    break
                if c + i < len(second) and first[c] == second[c + i]:
                    offset2 = i
                    break
        c += 1
    return (len(first) + len(second)) / 2 - lcs


def _closest(name: str, candidates: tuple[str, ...], threshold: float) -> str | None:
    if not name:
        return None
    if name in candidates:
        return name
    best = min(candidates, key=lambda candidate: sift3(name, candidate))
    return best if sift3(name, best) <= threshold else None


def suggest(address: str) -> str | None:
    """The address with its domain's likely typo fixed (ada@gmial.com: ada@gmail.com), or None."""
    local, at, domain = address.strip().lower().rpartition("@")
    if not at or not local or not domain:
        return None
    lists = domain_lists()
    second, _, top = domain.partition(".") if "." in domain else ("", "", domain)
    if second in lists.second_level and top in lists.top_level:
        return None
    closest = _closest(domain, lists.domains, lists.domain_threshold)
    if closest is not None:
        return None if closest == domain else f"{local}@{closest}"
    fixed = domain
    second_fix = _closest(second, lists.second_level, lists.second_level_threshold)
    if second_fix and second_fix != second:
        fixed = second_fix + fixed[len(second) :]
    top_fix = _closest(top, lists.top_level, lists.top_level_threshold)
    if top_fix and top_fix != top and second:
        fixed = fixed[: len(fixed) - len(top)] + top_fix
    return None if fixed == domain else f"{local}@{fixed}"


def plain_reason(candidate: str) -> str:
    """Why `candidate` is not an email address, in plain words, with what to do about it."""
    local, at, domain = candidate.rpartition("@")
    if not at:
        return "An email address needs an @ in it, like name@example.com."
    if any(character.isspace() for character in candidate):
        return "An email address can't contain spaces. Please check for a stray space."
    if "@" in local:
        return "An email address has only one @. Please check the address."
    if not local:
        return "Please add the part before the @, like name@example.com."
    if not domain:
        return "Please add the part after the @, like name@example.com."
    if "." not in domain or domain.startswith(".") or domain.endswith("."):
        return f"The part after the @ should be a full domain, like {domain.strip('.')}.com."
    return (
        "That doesn't look like a complete email address. Please check it, like name@example.com."
    )


def undeliverable(candidate: str) -> str:
    """Why mail to `candidate` cannot arrive (its domain takes no mail), in plain words."""
    domain = candidate.rpartition("@")[2]
    return f"We can't find a mail server for {domain}. Please check the part after the @."
