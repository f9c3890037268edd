"""Election state machine, driven by a simulated network and a virtual clock."""

from __future__ import annotations

from dataclasses import dataclass, field

from flamenco_p2p.config import Timing
from flamenco_p2p.election import (
    SERVER_ROLE,
    Action,
    BecomeHolder,
    Election,
    RequestVotes,
    StepDown,
    manager_role,
)
from flamenco_p2p.membership import Membership, NodeInfo, PeerState, Rank

TIMING = Timing()


def node_info(
    index: int, site: str = "a", priority: int = 50, **extra: bool
) -> NodeInfo:
    node_id = f"{index:032x}"
    return NodeInfo(
        node_id=node_id,
        site=site,
        address=f"127.0.0.{index}",
        node_port=7776,
        manager_port=7777,
        server_port=9999,
        can_manage=extra.get("can_manage", True),
        can_serve=extra.get("can_serve", True),
        rank=Rank(priority, 0, node_id),
        worker_slots=1,
        capabilities={},
        started=0.0,
    )


@dataclass
class SimNode:
    info: NodeInfo
    membership: Membership
    election: Election
    up: bool = True
    actions: list[Action] = field(default_factory=list)


class SimFarm:
    """Nodes that exchange heartbeats and votes instantly, on a virtual clock."""

    def __init__(self, infos: list[NodeInfo]) -> None:
        self.now = 0.0
        self.nodes: dict[str, SimNode] = {}
        for info in infos:
            membership = Membership(info, TIMING)
            self.nodes[info.node_id] = SimNode(
                info, membership, Election(membership, TIMING)
            )
        self.cut: set[frozenset[str]] = set()

    def linked(self, a: str, b: str) -> bool:
        return (
            self.nodes[a].up and self.nodes[b].up and frozenset({a, b}) not in self.cut
        )

    def step(self, seconds: float = TIMING.heartbeat_interval) -> None:
        self.now += seconds
        for node in self.nodes.values():
            if node.up:
                self._run(node, node.election.tick(self.now))
        for sender in self.nodes.values():
            if not sender.up:
                continue
            for receiver in self.nodes.values():
                if receiver is sender or not self.linked(
                    sender.info.node_id, receiver.info.node_id
                ):
                    continue
                self._heartbeat(sender, receiver)

    def _heartbeat(self, sender: SimNode, receiver: SimNode) -> None:
        receiver.membership.heard(sender.info, self.now)
        for role, epoch, holder in sender.election.claims():
            if holder == sender.info.node_id and role not in sender.election.held:
                continue
            actions = receiver.election.observe_claim(
                role, epoch, holder, self.now, holder == sender.info.node_id
            )
            self._run(receiver, actions)

    def _run(self, node: SimNode, actions: list[Action]) -> None:
        node.actions.extend(actions)
        for action in actions:
            if isinstance(action, RequestVotes):
                for voter_id in action.voters:
                    if not self.linked(node.info.node_id, voter_id):
                        continue
                    voter = self.nodes[voter_id]
                    granted, known = voter.election.handle_vote_request(
                        action.role, action.epoch, node.info.rank, self.now
                    )
                    more = node.election.handle_vote(
                        action.role, action.epoch, voter_id, granted, known
                    )
                    self._run(node, more)

    def run(self, seconds: float) -> None:
        steps = int(seconds / TIMING.heartbeat_interval)
        for _ in range(steps):
            self.step()

    def holders(self, role: str) -> dict[str, int]:
        return {
            node_id: node.election.held[role]
            for node_id, node in self.nodes.items()
            if node.up and role in node.election.held
        }

    def views(self, role: str) -> set[tuple[str, int] | None]:
        return {
            node.election.holder(role, self.now)
            for node in self.nodes.values()
            if node.up
        }


def test_election_one_holder_per_role() -> None:
    farm = SimFarm([node_info(i) for i in range(1, 4)])
    farm.run(5)
    servers = farm.holders(SERVER_ROLE)
    managers = farm.holders(manager_role("a"))
    assert len(servers) == 1
    assert len(managers) == 1
    assert list(servers.values()) == [1]
    assert len(farm.views(SERVER_ROLE)) == 1
    assert len(farm.views(manager_role("a"))) == 1


def test_election_highest_rank_wins() -> None:
    farm = SimFarm([node_info(1, priority=90), node_info(2), node_info(3)])
    farm.run(5)
    assert list(farm.holders(SERVER_ROLE)) == [node_info(1).node_id]


def test_election_waits_for_settle_time() -> None:
    farm = SimFarm([node_info(i) for i in range(1, 4)])
    farm.step(TIMING.settle_time / 2)
    assert farm.holders(SERVER_ROLE) == {}


def test_election_ineligible_node_never_holds() -> None:
    infos = [node_info(1, can_serve=False), node_info(2, can_serve=False), node_info(3)]
    farm = SimFarm(infos)
    farm.run(5)
    assert list(farm.holders(SERVER_ROLE)) == [node_info(3).node_id]


def test_election_one_manager_per_site() -> None:
    infos = [node_info(1, "a"), node_info(2, "a"), node_info(3, "b"), node_info(4, "b")]
    farm = SimFarm(infos)
    farm.run(5)
    assert len(farm.holders(manager_role("a"))) == 1
    assert len(farm.holders(manager_role("b"))) == 1
    assert len(farm.holders(SERVER_ROLE)) == 1
    site_b = {node_info(3).node_id, node_info(4).node_id}
    assert set(farm.holders(manager_role("b"))) <= site_b


def test_election_holder_death_elects_new_epoch() -> None:
    farm = SimFarm([node_info(i) for i in range(1, 4)])
    farm.run(5)
    ((old_holder, old_epoch),) = farm.holders(SERVER_ROLE).items()
    farm.nodes[old_holder].up = False
    farm.run(TIMING.dead_after + 3)
    holders = farm.holders(SERVER_ROLE)
    assert len(holders) == 1
    new_holder, new_epoch = next(iter(holders.items()))
    assert new_holder != old_holder
    assert new_epoch == old_epoch + 1
    assert farm.views(SERVER_ROLE) == {(new_holder, new_epoch)}


def test_election_stale_claim_is_ignored() -> None:
    farm = SimFarm([node_info(i) for i in range(1, 4)])
    farm.run(5)
    ((holder, epoch),) = farm.holders(SERVER_ROLE).items()
    observer = next(n for n in farm.nodes.values() if n.info.node_id != holder)
    actions = observer.election.observe_claim(
        SERVER_ROLE, epoch - 1, observer.info.node_id, farm.now, True
    )
    assert actions == []
    assert observer.election.holder(SERVER_ROLE, farm.now) == (holder, epoch)


def test_election_newer_epoch_makes_holder_step_down() -> None:
    farm = SimFarm([node_info(i) for i in range(1, 4)])
    farm.run(5)
    ((holder, epoch),) = farm.holders(SERVER_ROLE).items()
    other = next(n for n in farm.nodes.values() if n.info.node_id != holder)
    actions = farm.nodes[holder].election.observe_claim(
        SERVER_ROLE, epoch + 1, other.info.node_id, farm.now, True
    )
    assert any(isinstance(a, StepDown) for a in actions)
    assert SERVER_ROLE not in farm.nodes[holder].election.held


def test_election_voter_grants_once_per_epoch() -> None:
    membership = Membership(node_info(1), TIMING)
    election = Election(membership, TIMING)
    for i in (2, 3):
        membership.heard(node_info(i), 0.0)
    first = election.handle_vote_request(SERVER_ROLE, 1, node_info(3).rank, 0.0)
    second = election.handle_vote_request(SERVER_ROLE, 1, node_info(2).rank, 0.0)
    assert first == (True, 0)
    assert second == (False, 0)


def test_election_voter_denies_outranked_candidate() -> None:
    membership = Membership(node_info(1), TIMING)
    election = Election(membership, TIMING)
    membership.heard(node_info(2, priority=10), 0.0)
    granted, _known = election.handle_vote_request(
        SERVER_ROLE, 1, node_info(2, priority=10).rank, 0.0
    )
    assert granted is False


def test_election_no_two_holders_in_one_epoch_after_heal() -> None:
    farm = SimFarm([node_info(i) for i in range(1, 6)])
    ids = list(farm.nodes)
    farm.run(5)
    for a in ids[:2]:
        for b in ids[2:]:
            farm.cut.add(frozenset({a, b}))
    farm.run(TIMING.dead_after + 4)
    farm.cut.clear()
    farm.run(5)
    holders = farm.holders(SERVER_ROLE)
    assert len(holders) == 1
    epochs: dict[int, set[str]] = {}
    for node in farm.nodes.values():
        for action in node.actions:
            if isinstance(action, BecomeHolder) and action.role == SERVER_ROLE:
                epochs.setdefault(action.epoch, set()).add(node.info.node_id)
    assert all(len(winners) == 1 for winners in epochs.values()), epochs


def test_membership_states_follow_silence() -> None:
    membership = Membership(node_info(1), TIMING)
    peer = node_info(2)
    membership.heard(peer, 0.0)
    assert membership.state(peer.node_id, 0.1) is PeerState.ALIVE
    assert (
        membership.state(peer.node_id, TIMING.suspect_after + 0.1) is PeerState.SUSPECT
    )
    assert membership.state(peer.node_id, TIMING.dead_after + 0.1) is PeerState.DEAD
    membership.heard(peer, 10.0)
    assert membership.state(peer.node_id, 10.1) is PeerState.ALIVE
    membership.mark_left(peer.node_id)
    assert membership.state(peer.node_id, 10.2) is PeerState.LEFT


def test_election_ignores_claim_beyond_max_epoch() -> None:
    from flamenco_p2p.election import MAX_EPOCH

    farm = SimFarm([node_info(i) for i in range(1, 4)])
    farm.run(5)
    ((holder, epoch),) = farm.holders(SERVER_ROLE).items()
    node = farm.nodes[holder]
    forged = node_info(9).node_id
    actions = node.election.observe_claim(
        SERVER_ROLE, MAX_EPOCH + 1, forged, farm.now, True
    )
    assert actions == []
    assert node.election.held[SERVER_ROLE] == epoch
    granted, _known = node.election.handle_vote_request(
        SERVER_ROLE, MAX_EPOCH + 1, node_info(9, priority=999).rank, farm.now
    )
    assert granted is False


def test_election_ignores_roles_out_of_scope() -> None:
    membership = Membership(node_info(1, site="a"), TIMING)
    election = Election(membership, TIMING)
    actions = election.observe_claim("manager:b", 3, node_info(2).node_id, 0.0, True)
    assert actions == []
    assert election.handle_vote_request("whatever", 1, node_info(2).rank, 0.0) == (
        False,
        0,
    )
    assert "manager:b" not in election.views
    assert "whatever" not in election.views


def test_election_gossip_does_not_revive_silent_holder() -> None:
    membership = Membership(node_info(1, can_serve=False), TIMING)
    election = Election(membership, TIMING)
    holder = node_info(2)
    membership.heard(holder, 0.0)
    election.observe_claim(SERVER_ROLE, 4, holder.node_id, 0.0, True)
    assert election.holder(SERVER_ROLE, 0.1) == (holder.node_id, 4)
    later = TIMING.dead_after + 1.0
    election.tick(later)
    assert election.holder(SERVER_ROLE, later) is None
    # A third node still hears the holder and gossips its claim.
    actions = election.observe_claim(SERVER_ROLE, 4, holder.node_id, later, False)
    assert actions == []
    assert election.views[SERVER_ROLE].holder is None
    # Its own heartbeat brings it back.
    membership.heard(holder, later + 0.5)
    election.observe_claim(SERVER_ROLE, 4, holder.node_id, later + 0.5, True)
    assert election.holder(SERVER_ROLE, later + 0.6) == (holder.node_id, 4)
