"""What is in a chest at one time point: a set of findings with location and severity."""

from __future__ import annotations

from dataclasses import dataclass

from .findings import check_location, check_severity, finding_spec


@dataclass(frozen=True, order=True)
class FindingState:
    """One finding present in the chest (severity 1..3)."""

    name: str
    location: str | None
    severity: int

    def __post_init__(self) -> None:
        finding_spec(self.name)
        check_location(self.name, self.location)
        check_severity(self.name, self.severity)

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.name, self.location)


@dataclass(frozen=True)
class ChestState:
    """The findings of one radiograph. Absent findings are simply not listed."""

    findings: tuple[FindingState, ...] = ()

    def __post_init__(self) -> None:
        present = tuple(sorted((f for f in self.findings if f.severity > 0), key=_sort_key))
        keys = [f.key for f in present]
        if len(keys) != len(set(keys)):
            raise ValueError(f"a finding appears twice at the same location: {keys}")
        object.__setattr__(self, "findings", present)

    def severity(self, name: str, location: str | None) -> int:
        for f in self.findings:
            if f.key == (name, location):
                return f.severity
        return 0

    def with_severity(self, name: str, location: str | None, severity: int) -> ChestState:
        """A copy with one finding set to ``severity`` (0 removes it)."""
        rest = tuple(f for f in self.findings if f.key != (name, location))
        if severity == 0:
            check_location(name, location)
            return ChestState(rest)
        return ChestState(rest + (FindingState(name, location, severity),))

    def keys(self) -> list[tuple[str, str | None]]:
        return [f.key for f in self.findings]


def _sort_key(f: FindingState) -> tuple[str, str]:
    return (f.name, f.location or "")
