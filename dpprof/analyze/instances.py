"""Which executions of which ranks are one collective (parent side, step 0 of ``dpprof.analyze.matching``).

Executions with the same key (``dpprof.analyze.collectives``) are one collective, checked against its process
group, so that no collective is formed across ranks that cannot be in the same group:

* a member whose rank is not in the group, as most members' traces list it (``distributedInfo.pg_config``), is
  left out; an instance with more ranks than the group has members is no collective at all (nothing of it is
  matched);
* a send and a recv pair by their peers (``Dst Rank`` / ``Src Rank``, global ranks: torch/csrc/profiler/util.cpp
  ``saveNcclMeta``) and their order among the ops between those two ranks; when the traces name no peer, only
  between two ranks (each send with the other rank's recv of the same order);
* a collective whose group the traces do not name, on ranks of several groups (gloo spans carry no group name:
  ProcessGroupGloo records none), is matched among the ranks that belong to the same groups, by order. It is
  named after the candidate whose members it has, when one has exactly those, and marked ``ambiguous``: which
  group it ran in is a guess, so the clocks are not aligned from it.

Work is per execution key and per collective, never per trace event.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dpprof.analyze.collectives import LOCAL_GROUP, Group

Member = tuple[int, int]  # (rank, execution uid)


class _Keyed(Protocol):
    keys: list[tuple[Any, ...]]


@dataclass
class Instance:
    """One collective: its members, the group they ran in, and how the parent may use it."""

    label: str  # the group's name (CollectiveSkew.group)
    index: int  # order within its key
    members: list[Member]
    sender: Member | None = None  # point-to-point: the send (only the recv waits)
    ambiguous: bool = False  # the group is a guess: not a clock signal

    @property
    def aligns(self) -> bool:
        """Whether the members' ends are a clock signal (they end together)."""
        return not self.ambiguous and self.sender is None


def instance_key(rank: int, key: tuple[Any, ...]) -> tuple[Any, ...]:
    """The key under which a rank's execution meets the other participants' (see the module docstring)."""
    g = key[0]
    if g == LOCAL_GROUP:  # DP: the devices of one trace
        return (g, rank, *key[1:])
    if len(key) == 6 and key[1] == "p2p":
        _, _, kind, peer, step, k = key
        if peer is None:
            return (g, "p2p?", step, k)
        src, dst = (rank, peer) if kind == "send" else (peer, rank)
        return (g, "p2p", src, dst, step, k)
    return key


def instances(per_rank: Mapping[int, _Keyed]) -> tuple[list[Instance], dict[int, tuple[int, str]]]:
    """The collectives of all ranks, and per rank (count, candidate groups) of its executions in an ambiguous
    group (module docstring)."""
    raw: dict[tuple[Any, ...], list[Member]] = defaultdict(list)
    amb: dict[int, tuple[int, str]] = {}
    for rank, ex in per_rank.items():
        n = 0
        names = ""
        for uid, key in enumerate(ex.keys):
            raw[instance_key(rank, key)].append((rank, uid))
            g = key[0]
            if isinstance(g, Group) and g.ambiguous:
                n += 1
                names = g.name
        if n:
            amb[rank] = (n, names)
    out: list[Instance] = []
    for key, members in raw.items():
        if len(members) < 2:
            continue
        g = key[0]
        index = int(key[-1]) if isinstance(key[-1], int) else 0
        if g == LOCAL_GROUP:
            out.append(Instance(LOCAL_GROUP, index, members))
        elif key[1] in ("p2p", "p2p?"):
            out += _p2p(per_rank, key, members, str(g))
        elif not isinstance(g, Group):  # a bare name: nothing to check it against
            out.append(Instance(str(g), index, members))
        else:
            inst = _checked(members, [per_rank[r].keys[u][0] for r, u in members], index)
            if inst is not None:
                out.append(inst)
    return out, amb


def _checked(members: list[Member], groups: Sequence[str], index: int) -> Instance | None:
    """The instance with the members its group can hold (module docstring), or None."""
    g = Group.of(groups[0])
    if g.ambiguous:
        ranks = {r for r, _ in members}
        fits = [c for c in g.candidates if (not c[1] or ranks <= set(c[1])) and (c[2] is None or len(ranks) <= c[2])]
        if not fits:
            return None
        exact = [c for c in fits if set(c[1]) == ranks]
        return Instance(exact[0][0] if len(exact) == 1 else g.name, index, members, ambiguous=True)
    known = [x for x in groups if isinstance(x, Group)]
    views = Counter(x.ranks for x in known if x.ranks)
    sizes = [x.size for x in known if x.size]
    if views:
        allowed = set(views.most_common(1)[0][0])
        members = [m for m in members if m[0] in allowed]
    size = max(Counter(sizes).most_common(1)[0][0] if sizes else 0, len(allowed) if views else 0)
    n_ranks = len({r for r, _ in members})
    if n_ranks < 2 or (size and n_ranks > size):
        return None
    return Instance(str(g), index, members)


def _p2p(per_rank: Mapping[int, _Keyed], key: tuple[Any, ...], members: list[Member], group: str) -> list[Instance]:
    """Send/recv pairs of one p2p key: one pair when the peers are known; without peers, between two ranks."""
    def kind(m: Member) -> str:
        return str(per_rank[m[0]].keys[m[1]][2])

    index = int(key[-1])
    sends = [m for m in members if kind(m) == "send"]
    recvs = [m for m in members if kind(m) == "recv"]
    if key[1] == "p2p":  # (group, "p2p", src, dst, step, k): at most one of each
        return [Instance(group, index, [sends[0], recvs[0]], sender=sends[0])] if len(sends) == len(recvs) == 1 else []
    if len({r for r, _ in members}) != 2 or len(sends) > 2 or len(recvs) > 2:
        return []
    return [Instance(group, index, [s, r], sender=s) for s in sends for r in recvs if r[0] != s[0]]
