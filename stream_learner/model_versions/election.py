"""One trainer at a time: an election through Kafka's group protocol, and the fence a leader checks.

Trainers join the group ``<GROUP_ID>.trainer-election`` on the models topic; its one partition goes
to the leader. The assignor keeps it with the member that claims the greatest generation (the sitting
leader), else gives it to the longest-waiting standby, so a standby joining never deposes anyone.

A leader's ``generation`` is greater than the group's generation and than every generation already
published on the models topic, so every new leader's versions outrank the old ones'. Before it writes a
checkpoint or publishes, a leader :meth:`Election.confirm` s: an offset commit in the election group,
which the group coordinator refuses to a member it has removed (a paused, then resumed, process).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata
from aiokafka.errors import CommitFailedError, KafkaError, RebalanceInProgressError

from stream_learner.config import Settings
from stream_learner.errors import LeadershipLostError, LeadershipUnconfirmedError
from stream_learner.kafka.clients import security_kwargs
from stream_learner.model_versions.models_topic import ModelsTopic
from stream_learner.stopping import sleep_unless_stopped, until_stopped_or

log = structlog.get_logger(__name__)
CONFIRM_TIMEOUT_S = 10.0
RETRY_S = 2.0
"""How soon joining the election is tried again while the broker cannot be reached."""


class Election:
    """This process's membership of the trainers' election group."""

    def __init__(self, settings: Settings, stop: asyncio.Event) -> None:
        self._settings = settings
        self._stop = stop
        self.tp = TopicPartition(settings.models_topic, 0)
        self.generation = 0
        """The generation this process leads in (0 until it leads)."""
        self._claim = {"generation": 0, "waiting_since": time.time()}
        self._holds = self._lost = False
        self._won = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._poller: asyncio.Task[None] | None = None

    async def lead(self) -> bool:
        """Wait, standing by, until this process leads; False when stopped first. A broker that cannot be
        reached is waited for, as the service's other clients wait for it."""
        if not await self._join():
            return False
        await until_stopped_or(self._stop, self._won.wait())
        if self._stop.is_set():
            return False
        assert self._consumer is not None
        # private API: the group's generation, which grows with every rebalance; nothing public tells it.
        group_generation = int(self._consumer._coordinator.generation)
        self.generation = max(group_generation, await self._newest_published()) + 1
        self._claim["generation"] = self.generation
        log.info("trainer_elected", generation=self.generation)
        return True

    async def _join(self) -> bool:
        """Join the election group, retrying while the broker cannot be reached; False when stopped first."""
        group = f"{self._settings.group_id}.trainer-election"
        while not self._stop.is_set():
            self._consumer = self._member(group)
            try:
                await self._consumer.start()
            except KafkaError as exc:
                if not exc.retriable:
                    raise
                await self._consumer.stop()
                log.warning("broker_unreachable", error=f"{type(exc).__name__}: {exc}", retry_in_s=RETRY_S)
                await sleep_unless_stopped(self._stop, RETRY_S)
                continue
            self._poller = asyncio.create_task(self._poll())
            log.info("trainer_standing_by", group=group)
            return True
        return False

    def _member(self, group: str) -> AIOKafkaConsumer:
        s = self._settings
        consumer = AIOKafkaConsumer(
            **security_kwargs(s),
            bootstrap_servers=s.bootstrap_servers,
            client_id=s.client_id,
            group_id=group,
            enable_auto_commit=False,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=max(s.session_timeout_ms // 3, 100),
            partition_assignment_strategy=(_assignor(lambda: orjson.dumps(self._claim)),),
        )
        consumer.subscribe([s.models_topic], listener=_Listener(self))
        return consumer

    async def _newest_published(self) -> int:
        topic = ModelsTopic(self._settings)
        if not await topic.start(self._stop):
            return 0
        try:
            version, _ = await topic.newest([])
            return version.info.generation if version is not None else 0
        finally:
            await topic.stop()

    async def _poll(self) -> None:
        """Keep the membership alive: aiokafka leaves a group it is not polled in (``max_poll_interval_ms``)."""
        assert self._consumer is not None
        while True:
            await self._consumer.getmany(timeout_ms=1000)

    def assigned(self, partitions: set[TopicPartition]) -> None:
        """A rebalance ended: this process leads if it holds the partition; a leader that lost it is deposed."""
        assert self._consumer is not None
        self._holds = self.tp in partitions
        if self._holds:
            self._consumer.pause(self.tp)  # the election needs the partition held, not read
            self._won.set()
        elif self.generation:
            self._lost = True
            log.error("trainer_deposed", generation=self.generation, detail="another trainer holds the election")

    def revoked(self) -> None:
        self._holds = False

    async def confirm(self) -> None:
        """Return while this process leads; raise :class:`LeadershipLostError` once another may lead, or
        :class:`LeadershipUnconfirmedError` when the coordinator cannot tell now (unreachable, rebalancing)."""
        assert self._consumer is not None
        deadline = time.monotonic() + CONFIRM_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._lost:
                raise LeadershipLostError(f"this trainer (generation {self.generation}) no longer leads")
            if self._holds:
                try:
                    await asyncio.wait_for(self._consumer.commit({self.tp: 0}), CONFIRM_TIMEOUT_S)
                    return
                except CommitFailedError as exc:
                    if not isinstance(exc.__cause__, RebalanceInProgressError):
                        self._lost = True
                        continue
                except (KafkaError, TimeoutError) as exc:
                    raise LeadershipUnconfirmedError(f"the election group cannot confirm: {exc!r}") from exc
            await asyncio.sleep(0.1)
        raise LeadershipUnconfirmedError(f"the election group did not settle within {CONFIRM_TIMEOUT_S:g} s")

    async def close(self) -> None:
        """Leave the group (a standby takes over at once)."""
        if self._poller is not None:
            self._poller.cancel()
        if self._consumer is not None:
            await self._consumer.stop()


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka has no type information
    def __init__(self, election: Election) -> None:
        self._election = election

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self._election.revoked()

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._election.assigned(set(assigned))


def _assignor(claim: Any) -> type[AbstractPartitionAssignor]:
    """The election's assignor; ``claim()`` is this member's bid (its generation, and since when it waits)."""

    class ElectionAssignor(AbstractPartitionAssignor):  # type: ignore[misc]  # aiokafka has no type information
        name = "stream-learner-election"
        version = 0

        @classmethod
        def metadata(cls, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
            return ConsumerProtocolMemberMetadata(cls.version, list(topics), claim())

        @classmethod
        def assign(
            cls, cluster: Any, members: Mapping[str, ConsumerProtocolMemberMetadata]
        ) -> dict[str, ConsumerProtocolMemberAssignment]:
            leader = max(members, key=lambda member: _rank(member, members[member].user_data))
            topics = sorted({topic for m in members.values() for topic in m.subscription})
            held = [(t, sorted(cluster.partitions_for_topic(t) or ())) for t in topics]
            return {m: ConsumerProtocolMemberAssignment(cls.version, held if m == leader else [], b"") for m in members}

        @classmethod
        def on_assignment(cls, assignment: ConsumerProtocolMemberAssignment) -> None:
            pass

    return ElectionAssignor


def _rank(member: str, user_data: bytes) -> tuple[int, float, str]:
    """The sitting leader (greatest generation) first, then the standby waiting longest."""
    try:
        bid = orjson.loads(user_data)
        return int(bid["generation"]), -float(bid["waiting_since"]), member
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return -1, 0.0, member
