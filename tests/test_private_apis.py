"""The private aiokafka and torch APIs the package relies on, pinned: an upgrade that changes one fails here.

Each assertion names the file of ours that uses the API (with a ``# private API:`` comment at the call).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka import codec as aiokafka_codec
from aiokafka.cluster import ClusterMetadata
from aiokafka.conn import create_conn
from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.producer.message_accumulator import BatchBuilder, MessageBatch
from aiokafka.protocol import fetch as fetch_protocol
from aiokafka.record.util import calc_crc32c
from torch import nn
from torch.nn.modules import module as torch_module
from torch.utils.hooks import RemovableHandle

from stream_learner.kafka.positions import known_position

TP = TopicPartition("t", 0)
NOWHERE = "localhost:1"  # for clients that are built, never started


def needed_by(path: str, what: str) -> str:
    return f"{what}: stream_learner/{path} depends on it (see its '# private API' comment)"


def parameters(function: Callable[..., object]) -> list[str]:
    return list(inspect.signature(function).parameters)


def attribute(obj: object, path: str, why: str) -> Any:
    """``obj.<path>``, asserting each step of the dotted ``path`` on the way."""
    for name in path.split("."):
        assert hasattr(obj, name), f"no {name!r} on the way to {path!r}; {why}"
        obj = getattr(obj, name)
    return obj


# aiokafka -----------------------------------------------------------------------------------


def test_fetch_request_takes_what_fetch_partition_sends() -> None:
    why = needed_by("kafka/fetch_request.py", "aiokafka.protocol.fetch.FetchRequest(...) and AIOKafkaClient.send")
    fields = ["max_wait_time", "min_bytes", "max_bytes", "isolation_level", "topics"]
    assert parameters(fetch_protocol.FetchRequest)[:5] == fields, why
    request = fetch_protocol.FetchRequest(100, 1, 1024, 1, [("t", [(0, 5, 1024)])])
    for version in (4, 11):
        built = request.build(getattr(fetch_protocol, f"FetchRequest_v{version}"))
        assert built.isolation_level == 1 and built.max_bytes == 1024, why
    assert parameters(AIOKafkaClient.send)[:3] == ["self", "node_id", "request"], why
    assert inspect.iscoroutinefunction(AIOKafkaClient.fetch_all_metadata), why
    assert callable(ClusterMetadata.leader_for_partition), why


@pytest.mark.parametrize("version", range(4, 12))
def test_fetch_responses_keep_the_partition_fields_fetch_partition_reads(version: int) -> None:
    response = getattr(fetch_protocol, f"FetchResponse_v{version}")
    why = needed_by("kafka/fetch_request.py", f"the layout of aiokafka's FetchResponse_v{version}")
    assert response.API_VERSION == version and "topics" in response.SCHEMA.names, why
    topics = response.SCHEMA.fields[response.SCHEMA.names.index("topics")].array_of
    partition = topics.fields[topics.names.index("partitions")].array_of
    between = ["last_stable_offset", *(["log_start_offset"] if version >= 5 else []), "aborted_transactions"]
    last = ["preferred_read_replica"] if version >= 11 else []
    expected = ["partition", "error_code", "highwater_offset", *between, *last, "message_set"]
    assert list(partition.names) == expected, why


def test_calc_crc32c_is_crc_32c_over_bytes_and_memoryviews() -> None:
    why = needed_by("kafka/batch_format.py and kernels/record_batch.py", "aiokafka.record.util.calc_crc32c")
    check_value = 0xE3069283  # CRC-32C of b"123456789", its standard check value
    assert calc_crc32c(b"123456789") == calc_crc32c(memoryview(b"--123456789")[2:]) == check_value, why


@pytest.mark.parametrize("name", ["gzip", "snappy", "lz4", "zstd"])
def test_codec_decoders_read_what_the_encoders_write(name: str) -> None:
    why = needed_by("kafka/batch_format.py", f"aiokafka.codec.{name}_decode")
    data = b"stream_learner " * 200
    encoded = getattr(aiokafka_codec, f"{name}_encode")(data)
    assert getattr(aiokafka_codec, f"{name}_decode")(bytes(encoded)) == data, why


def test_the_create_conn_of_the_refusal_check_takes_the_security_settings() -> None:
    why = needed_by("kafka/clients.py", "aiokafka.conn.create_conn(host, port, client_id=..., **security_kwargs)")
    names = parameters(create_conn)
    assert names[:2] == ["host", "port"], why
    security = ["security_protocol", "ssl_context", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password"]
    assert set(security + ["client_id"]) <= set(names), why
    assert inspect.iscoroutinefunction(create_conn), why


def test_the_fetchers_out_of_range_line_is_the_one_the_offset_reset_watch_reads() -> None:
    why = needed_by("kafka/offset_resets.py", "aiokafka's 'Fetch offset %s is out of range' log line and its logger")
    assert aiokafka_fetcher.log.name == "aiokafka.consumer.fetcher", why
    source = inspect.getsource(aiokafka_fetcher)
    call = r'log\.info\(\s*"Fetch offset %s is out of range for partition %s,"\s*" resetting offset",\s*\w+,\s*tp,\s*\)'
    assert re.search(call, source), why


async def test_the_producer_keeps_its_partitioner_and_the_settings_packed_batches_check() -> None:
    plain = AIOKafkaProducer(bootstrap_servers=NOWHERE)
    idempotent = AIOKafkaProducer(bootstrap_servers=NOWHERE, enable_idempotence=True, compression_type="gzip")
    try:
        why = needed_by("kafka/partitioned_send.py", "AIOKafkaProducer._partitioner(key, all_partitions, available)")
        partitioner = attribute(plain, "_partitioner", why)
        assert all(partitioner(key, [0, 1, 2], [0, 1, 2]) in (0, 1, 2) for key in (b"a", b"b", None)), why
        why = needed_by("kernels/record_batch.py", "AIOKafkaProducer._txn_manager and ._compression_type")
        assert attribute(plain, "_txn_manager", why) is None and attribute(plain, "_compression_type", why) is None, why
        assert idempotent._txn_manager is not None and idempotent._compression_type == "gzip", why
        assert isinstance(plain.client, AIOKafkaClient), needed_by("service.py", "AIOKafkaProducer.client")
    finally:
        await plain.stop()
        await idempotent.stop()


async def test_the_accumulator_builds_through_the_batch_builder_methods_closed_batch_mirrors() -> None:
    why = needed_by("kernels/record_batch.py", "BatchBuilder._build() and ._set_producer_state(...)")
    assert parameters(BatchBuilder._build) == ["self"], why
    state_parameters = ["self", "producer_id", "producer_epoch", "base_sequence"]
    assert parameters(BatchBuilder._set_producer_state) == state_parameters, why

    states: list[tuple[int, int, int]] = []

    class Finished:
        def record_count(self) -> int:
            return 1

        def _set_producer_state(self, producer_id: int, producer_epoch: int, base_sequence: int) -> None:
            states.append((producer_id, producer_epoch, base_sequence))

        def _build(self) -> bytearray:
            return bytearray(b"the batch")

    batch = MessageBatch(TP, Finished(), 30.0, 0.0)
    batch.set_producer_state(7, 0, 3)
    assert batch.get_data_buffer() == b"the batch" and states == [(7, 0, 3)], why


async def test_the_consumers_subscription_state_holds_the_position_known_position_reads() -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=NOWHERE, enable_auto_commit=False)
    why = needed_by("kafka/positions.py", "AIOKafkaConsumer._subscription.subscription.assignment.state_value(tp)")
    try:
        consumer.assign([TP])
        state = attribute(consumer, "_subscription.subscription.assignment.state_value", why)(TP)
        assert state is not None and not attribute(state, "has_valid_position", why), why
        assert known_position(consumer, TP) is None, why
        consumer._subscription.seek(TP, 42)  # what consumer.seek() does once the consumer runs
        assert state.has_valid_position and state.position == 42, why
        assert known_position(consumer, TP) == 42, why
    finally:
        await consumer.stop()


async def test_the_consumers_client_refreshes_all_metadata() -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=NOWHERE)
    why = needed_by("tools/predictions.py", "AIOKafkaConsumer._client.fetch_all_metadata()")
    try:
        assert isinstance(attribute(consumer, "_client", why), AIOKafkaClient), why
        assert inspect.iscoroutinefunction(consumer._client.fetch_all_metadata), why
    finally:
        await consumer.stop()


# torch --------------------------------------------------------------------------------------


class Spy(nn.Module):
    """Records the calls of the two private methods that learning/standardizer.py overrides."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(2))
        self.calls: list[str] = []

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Spy:
        self.calls.append("_apply")
        return super()._apply(fn, recurse)  # type: ignore[no-untyped-call, no-any-return]  # torch leaves it untyped

    def _load_from_state_dict(self, *args: object, **kwargs: object) -> None:
        self.calls.append("_load_from_state_dict")
        super()._load_from_state_dict(*args, **kwargs)


def test_every_move_and_load_of_a_module_passes_through_the_methods_the_standardizer_overrides() -> None:
    why = needed_by("learning/standardizer.py", "nn.Module._apply(fn, recurse) and ._load_from_state_dict(...)")
    assert parameters(nn.Module._apply) == ["self", "fn", "recurse"], why
    assert parameters(nn.Module._load_from_state_dict) == [
        "self", "state_dict", "prefix", "local_metadata", "strict", "missing_keys", "unexpected_keys", "error_msgs",
    ], why  # fmt: skip
    spy = Spy()
    outer = nn.Sequential(spy)
    moves: list[Callable[[nn.Module], nn.Module]] = [lambda m: m.double(), lambda m: m.to(torch.float32), nn.Module.cpu]
    for move in moves:
        spy.calls.clear()
        move(outer)
        assert spy.calls == ["_apply"], why
    spy.calls.clear()
    outer.load_state_dict({"0.mean": torch.ones(2)})
    assert spy.calls == ["_load_from_state_dict"] and outer.state_dict()["0.mean"].tolist() == [1.0, 1.0], why


def test_foreach_add_adds_in_place() -> None:
    why = needed_by("kernels/fused_adam.py", "torch._foreach_add_(tensors, 1)")
    steps = [torch.tensor(1.0), torch.tensor(5.0)]
    torch._foreach_add_(steps, 1)
    assert [s.item() for s in steps] == [2.0, 6.0], why


def test_foreach_norm_gives_each_tensors_norm() -> None:
    why = needed_by("learning/autograd_net.py", "torch._foreach_norm(tensors)")
    norms = torch._foreach_norm([torch.tensor([3.0, 4.0]), torch.tensor([-2.0])])
    assert [n.item() for n in norms] == [5.0, 2.0], why


def test_fused_adam_steps_exactly_as_adam_fused_does() -> None:
    why = needed_by("kernels/fused_adam.py", "torch._fused_adam_(...) with FusedAdamStep's arguments")
    assert hasattr(torch, "_fused_adam_"), why  # else FusedAdamStep.of gives None: optimizer.step() without a word
    reference = nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    optimizer = torch.optim.Adam([reference], lr=0.1, fused=True)
    reference.grad = torch.tensor([0.5, -1.0, 0.25])
    optimizer.step()  # creates the state, as the first step does
    direct = reference.detach().clone()
    state = {name: value.clone() for name, value in optimizer.state[reference].items()}
    grad = torch.tensor([-0.3, 0.7, 2.0])
    reference.grad = grad.clone()
    optimizer.step()
    steps = [state["step"]]
    with torch.no_grad():
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(
            [direct], [grad], [state["exp_avg"]], [state["exp_avg_sq"]], [], steps,
            amsgrad=False, lr=0.1, beta1=0.9, beta2=0.999, weight_decay=0.0,
            eps=1e-8, maximize=False, grad_scale=None, found_inf=None,
        )  # fmt: skip
    assert torch.equal(direct, reference.detach()), why
    for name, value in optimizer.state[reference].items():
        assert torch.equal(state[name], value), why


def test_a_modules_training_flag_is_a_plain_attribute() -> None:
    why = needed_by("learning/autograd_net.py", "nn.Module.training kept in the instance __dict__ (set there)")
    module = nn.Linear(2, 1)
    assert module.__dict__.get("training") is True, why
    module.__dict__["training"] = False
    assert module.training is False, why
    module.train(True)
    assert module.__dict__["training"] is True, why


MODULE_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
GLOBAL_HOOKS = tuple(f"_global{name}" for name in MODULE_HOOKS)


def no_hook(*args: object, **kwargs: object) -> None:
    return None


@pytest.mark.parametrize(
    "register",
    [
        lambda m: m.register_forward_hook(no_hook),
        lambda m: m.register_forward_hook(no_hook, with_kwargs=True),
        lambda m: m.register_forward_pre_hook(no_hook),
        lambda m: m.register_forward_pre_hook(no_hook, with_kwargs=True),
        lambda m: m.register_full_backward_hook(no_hook),
        lambda m: m.register_full_backward_pre_hook(no_hook),
        lambda m: m.register_backward_hook(no_hook),
    ],
)
def test_a_modules_hooks_show_in_the_attributes_the_dense_net_checks(register: Callable[[nn.Module], object]) -> None:
    why = needed_by("kernels/dense_net.py", f"nn.Module's hook dicts {MODULE_HOOKS}")
    module = nn.Linear(2, 1)
    assert all(hasattr(module, name) and not getattr(module, name) for name in MODULE_HOOKS), why
    register(module)
    assert any(getattr(module, name) for name in MODULE_HOOKS), why


@pytest.mark.parametrize("kind", ["forward_hook", "forward_pre_hook", "full_backward_hook", "full_backward_pre_hook"])
def test_global_hooks_show_in_the_attributes_the_dense_net_checks(kind: str) -> None:
    why = needed_by("kernels/dense_net.py", f"torch.nn.modules.module's {GLOBAL_HOOKS}")
    assert all(hasattr(torch_module, name) and not getattr(torch_module, name) for name in GLOBAL_HOOKS), why
    full_backward = torch_module._global_is_full_backward_hook
    handle: RemovableHandle = getattr(torch_module, f"register_module_{kind}")(no_hook)
    try:
        assert any(getattr(torch_module, name) for name in GLOBAL_HOOKS), why
    finally:
        handle.remove()
        torch_module._global_is_full_backward_hook = full_backward  # set for good by a full backward hook


def test_the_group_coordinator_keeps_the_generation_where_the_election_reads_it() -> None:
    from aiokafka.consumer.group_coordinator import GroupCoordinator

    why = needed_by("model_versions/election.py", "AIOKafkaConsumer._coordinator.generation")
    assert "self._coordinator = " in inspect.getsource(AIOKafkaConsumer.start), why
    assert "self.generation = " in inspect.getsource(GroupCoordinator.__init__), why
    from aiokafka.consumer import group_coordinator

    assert "self._coordinator.generation = response.generation_id" in inspect.getsource(group_coordinator), why


def test_a_custom_assignor_gets_member_metadata_with_user_data() -> None:
    from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata

    why = needed_by("model_versions/election.py", "AbstractPartitionAssignor and the consumer protocol structs")
    assert {"assign", "metadata", "on_assignment"} <= set(AbstractPartitionAssignor.__abstractmethods__), why
    metadata = ConsumerProtocolMemberMetadata(0, ["models"], b'{"generation": 1}')
    assert metadata.user_data == b'{"generation": 1}' and metadata.subscription == ["models"], why
    assert ConsumerProtocolMemberAssignment(0, [("models", [0])], b"").assignment == [("models", [0])], why
