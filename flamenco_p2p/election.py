"""Election of one manager per site and one server per farm.

A pure state machine: the daemon feeds it the peer table, claims seen in heartbeats,
and vote messages, each with the current time, and carries out the actions it returns.

The rules:

- A role is *vacant* when no claim is known, or the holder is dead or has left, or
  its lease (renewed by each heartbeat that carries the claim) ran out.
- When a role is vacant, the best-ranked reachable eligible node asks every
  reachable member in the role's scope for a vote on epoch ``max known + 1``.
- A voter grants one vote per role and epoch, only for an epoch newer than any it
  knows, only while it sees no live holder, and only to a candidate that no live
  eligible member outranks.
- A candidate that collects votes from more than half of the reachable members of
  the scope holds the role for that epoch.
- A holder that sees a claim with a newer epoch steps down at once. Two claims of
  one epoch cannot both win a majority of the same members, but views of the
  membership can differ; the claim of the larger node id then wins.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from flamenco_p2p.config import Timing
from flamenco_p2p.membership import Membership, NodeInfo, PeerState, Rank

logger = logging.getLogger(__name__)

SERVER_ROLE = "server"
CAMPAIGN_TIMEOUT = 1.0
# Far below the wire format's limit of 2**53 and far above any real farm's count
# of elections. A claim beyond it can only be forged, and taking it would leave
# no epoch to move on to.
MAX_EPOCH = 2**52


def manager_role(site: str) -> str:
    """Return the role key of a site's manager."""
    return f"manager:{site}"


@dataclass(slots=True)
class RoleView:
    """The holder of one role, as this node has recorded it."""

    epoch: int = 0
    holder: str | None = None
    lease_until: float = 0.0


@dataclass(slots=True)
class Campaign:
    """This node's open bid for a role."""

    epoch: int
    started: float
    voters: frozenset[str]
    granted: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class RequestVotes:
    """Ask these peers to vote for this node."""

    role: str
    epoch: int
    voters: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BecomeHolder:
    """This node now holds the role for this epoch: bind its port."""

    role: str
    epoch: int


@dataclass(frozen=True, slots=True)
class StepDown:
    """This node no longer holds the role: stop acting on it and unbind its port."""

    role: str
    epoch: int
    reason: str


@dataclass(frozen=True, slots=True)
class HolderChanged:
    """Another node holds the role now (or nobody, when holder is None)."""

    role: str
    epoch: int
    holder: str | None


Action = RequestVotes | BecomeHolder | StepDown | HolderChanged


class Election:
    """Role election state of one node."""

    def __init__(self, membership: Membership, timing: Timing) -> None:
        self.membership = membership
        self.timing = timing
        self.views: dict[str, RoleView] = {}
        self.votes_cast: dict[tuple[str, int], str] = {}
        self.campaigns: dict[str, Campaign] = {}
        self.held: dict[str, int] = {}

    @property
    def node_id(self) -> str:
        """This node's id."""
        return self.membership.me.node_id

    def roles_in_scope(self) -> list[str]:
        """Return the role keys this node takes part in."""
        return [SERVER_ROLE, manager_role(self.membership.me.site)]

    def view(self, role: str) -> RoleView:
        """Return this node's view of a role, creating an empty one."""
        return self.views.setdefault(role, RoleView())

    def holder(self, role: str, now: float) -> tuple[str, int] | None:
        """Return the live holder of a role and its epoch, or None when vacant."""
        view = self.views.get(role)
        if view is None or view.holder is None:
            return None
        if view.holder == self.node_id:
            return (view.holder, view.epoch) if role in self.held else None
        state = self.membership.state(view.holder, now)
        if state in (PeerState.DEAD, PeerState.LEFT) or now > view.lease_until:
            return None
        return view.holder, view.epoch

    def claims(self) -> list[tuple[str, int, str]]:
        """Return (role, epoch, holder) of every holder on record, for gossip."""
        return [
            (role, view.epoch, view.holder)
            for role, view in self.views.items()
            if view.holder is not None
        ]

    def observe_claim(
        self, role: str, epoch: int, holder: str, now: float, direct: bool
    ) -> list[Action]:
        """Take in a claim seen in a heartbeat.

        ``direct`` is True when the holder itself sent the heartbeat; only that
        renews the lease, so a dead holder's claim cannot be kept alive by gossip.
        """
        actions: list[Action] = []
        if role not in self.roles_in_scope():
            return actions
        if epoch > MAX_EPOCH:
            logger.warning(
                "ignored a claim of %s at epoch %d from node %s: over %d",
                role,
                epoch,
                holder,
                MAX_EPOCH,
            )
            return actions
        view = self.view(role)
        if epoch < view.epoch:
            return actions
        if not direct and epoch == view.epoch and self._is_gone(holder, now):
            # Gossip about a holder this node cannot hear: it stays vacant here
            # instead of flipping back and forth on every heartbeat.
            return actions
        # Two claims of one epoch: the larger node id wins (see the module notes).
        rival = view.holder
        if (
            epoch == view.epoch
            and rival is not None
            and rival != holder
            and rival > holder
        ):
            return actions
        if role in self.held and (epoch, holder) != (self.held[role], self.node_id):
            reason = f"node {holder} holds epoch {epoch}"
            actions.append(StepDown(role, self.held.pop(role), reason))
            logger.warning("stepping down as %s: %s", role, reason)
        changed = (view.epoch, view.holder) != (epoch, holder)
        view.epoch = epoch
        view.holder = holder
        if direct or changed:
            view.lease_until = now + self.timing.dead_after
        if changed:
            self.campaigns.pop(role, None)
            logger.info("%s is now node %s, epoch %d", role, holder, epoch)
            actions.append(HolderChanged(role, epoch, holder))
        return actions

    def _is_gone(self, node_id: str, now: float) -> bool:
        if node_id == self.node_id:
            return False
        return self.membership.state(node_id, now) in (PeerState.DEAD, PeerState.LEFT)

    def tick(self, now: float, may_stand: bool = True) -> list[Action]:
        """Start, finish or drop campaigns for vacant roles.

        ``may_stand`` is False while the node still waits to hear from peers it
        has found, so that it does not win an election that they would have won.
        """
        actions: list[Action] = []
        for role in self.roles_in_scope():
            if role in self.held:
                view = self.view(role)
                view.lease_until = now + self.timing.dead_after
                continue
            actions.extend(self._check_vacancy(role, now, may_stand))
        return actions

    def _check_vacancy(self, role: str, now: float, may_stand: bool) -> list[Action]:
        if self.holder(role, now) is not None:
            return []
        view = self.view(role)
        actions: list[Action] = []
        if view.holder is not None and view.holder != self.node_id:
            logger.warning(
                "%s holder %s (epoch %d) is gone", role, view.holder, view.epoch
            )
            view.holder = None
            actions.append(HolderChanged(role, view.epoch, None))
        campaign = self.campaigns.get(role)
        if campaign is not None and now - campaign.started < CAMPAIGN_TIMEOUT:
            return actions
        if campaign is not None:
            logger.info("election for %s epoch %d timed out", role, campaign.epoch)
            del self.campaigns[role]
        if not may_stand or not self._should_run(role, now):
            return actions
        return actions + self._start_campaign(role, now)

    def _should_run(self, role: str, now: float) -> bool:
        me = self.membership.me
        if not _eligible(me, role):
            return False
        if now - me.started < self.timing.settle_time:
            return False
        best = self.best_candidate(role, now)
        return best is not None and best.node_id == me.node_id

    def best_candidate(self, role: str, now: float) -> NodeInfo | None:
        """Return the best-ranked alive node eligible for the role."""
        eligible = [n for n in self.membership.alive(now) if _eligible(n, role)]
        if not eligible:
            return None
        return max(eligible, key=lambda n: n.rank.key())

    def _start_campaign(self, role: str, now: float) -> list[Action]:
        epoch = self.view(role).epoch + 1
        voters = frozenset(
            n.node_id for n in self.membership.reachable(now) if _in_scope(n, role)
        )
        campaign = Campaign(epoch, now, voters, {self.node_id})
        self.campaigns[role] = campaign
        self.votes_cast[(role, epoch)] = self.node_id
        logger.info("standing for %s, epoch %d, %d voters", role, epoch, len(voters))
        won = self._maybe_win(role, campaign)
        if won:
            return won
        others = tuple(sorted(voters - {self.node_id}))
        return [RequestVotes(role, epoch, others)]

    def _maybe_win(self, role: str, campaign: Campaign) -> list[Action]:
        if len(campaign.granted & campaign.voters) * 2 <= len(campaign.voters):
            return []
        del self.campaigns[role]
        view = self.view(role)
        view.epoch = campaign.epoch
        view.holder = self.node_id
        self.held[role] = campaign.epoch
        logger.info("won the election for %s, epoch %d", role, campaign.epoch)
        return [BecomeHolder(role, campaign.epoch)]

    def handle_vote_request(
        self, role: str, epoch: int, candidate: Rank, now: float
    ) -> tuple[bool, int]:
        """Decide on a vote; returns (granted, the newest epoch on record)."""
        if role not in self.roles_in_scope():
            return False, 0
        view = self.view(role)
        key = (role, epoch)
        previous = self.votes_cast.get(key)
        if previous is not None:
            return previous == candidate.node_id, view.epoch
        reason = self._deny_reason(role, epoch, candidate, now)
        if reason:
            logger.info(
                "denied vote for %s epoch %d to %s: %s",
                role,
                epoch,
                candidate.node_id,
                reason,
            )
            return False, view.epoch
        self.votes_cast[key] = candidate.node_id
        self._prune_votes()
        return True, view.epoch

    def _deny_reason(self, role: str, epoch: int, candidate: Rank, now: float) -> str:
        if role not in self.roles_in_scope():
            return "the role is not one this node takes part in"
        if epoch > MAX_EPOCH:
            return f"epoch {epoch} is over {MAX_EPOCH}"
        view = self.view(role)
        if epoch <= view.epoch:
            return f"epoch {view.epoch} is already known"
        holder = self.holder(role, now)
        if holder is not None and holder[0] != candidate.node_id:
            return f"node {holder[0]} holds it"
        best = self.best_candidate(role, now)
        outranked = best is not None and best.rank.key() > candidate.key()
        if outranked and best is not None and best.node_id != candidate.node_id:
            return f"node {best.node_id} ranks higher"
        return ""

    def handle_vote(
        self, role: str, epoch: int, voter: str, granted: bool, known_epoch: int
    ) -> list[Action]:
        """Count a vote for one of this node's campaigns."""
        campaign = self.campaigns.get(role)
        if campaign is None or campaign.epoch != epoch:
            return []
        if granted:
            campaign.granted.add(voter)
            return self._maybe_win(role, campaign)
        if known_epoch >= epoch:
            view = self.view(role)
            view.epoch = max(view.epoch, min(known_epoch, MAX_EPOCH))
            del self.campaigns[role]
            logger.info(
                "lost the election for %s: epoch %d is known", role, known_epoch
            )
        return []

    def resign_all(self) -> list[StepDown]:
        """Give up every role (clean shutdown)."""
        actions = [
            StepDown(role, epoch, "node is stopping")
            for role, epoch in self.held.items()
        ]
        self.held.clear()
        return actions

    def _prune_votes(self) -> None:
        if len(self.votes_cast) > 1000:
            for key in sorted(self.votes_cast, key=lambda k: k[1])[:500]:
                del self.votes_cast[key]


def _in_scope(node: NodeInfo, role: str) -> bool:
    return role == SERVER_ROLE or role == manager_role(node.site)


def _eligible(node: NodeInfo, role: str) -> bool:
    if not _in_scope(node, role):
        return False
    return node.can_serve if role == SERVER_ROLE else node.can_manage
